-- Every new job wakes the workers of its queue, a scheduled one included: an idle worker then
-- sleeps until that job's run_at instead of until its fallback poll (SQLite's commit hooks
-- already wake on every insert).
CREATE OR REPLACE FUNCTION malaka_jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('malaka_jobs', q.queue) FROM (SELECT DISTINCT queue FROM new_jobs) AS q;
    RETURN NULL;
END;
$$;
