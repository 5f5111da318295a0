-- GET /reports?state= lists newest first.
CREATE INDEX malaka_reports_state_id ON malaka_reports (state, id);
