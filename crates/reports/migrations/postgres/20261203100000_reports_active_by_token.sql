-- The per-token quota counts a token's queued and running reports on every request.
CREATE INDEX malaka_reports_active_by_token ON malaka_reports (token_id)
    WHERE state IN ('queued', 'running');
