-- GET /events/failures filters by state or listener, newest first.
CREATE INDEX malaka_delivery_failures_state_id ON malaka_delivery_failures (state, id);
CREATE INDEX malaka_delivery_failures_listener_id ON malaka_delivery_failures (listener, id);
