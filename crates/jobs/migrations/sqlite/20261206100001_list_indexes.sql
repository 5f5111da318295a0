-- `malaka jobs list` and GET /jobs filter by state, queue or kind, newest first.
CREATE INDEX malaka_jobs_state_id ON malaka_jobs (state, id);
CREATE INDEX malaka_jobs_queue_id ON malaka_jobs (queue, id);
CREATE INDEX malaka_jobs_kind_id ON malaka_jobs (kind, id);
