-- Rejected bodies are stored bounded (the first 8 KiB), with the whole body's size and SHA-256,
-- so a flood of large bodies cannot grow the database without limit and a body can still be
-- matched to the message an operator holds.
ALTER TABLE mplink_event_log ADD COLUMN body_sha256 TEXT;
ALTER TABLE mplink_event_log ADD COLUMN body_bytes BIGINT;

-- One row per applied decision: which delivery changed which subscription, from what to what.
-- Deliberately without a unique key: a fact applied twice shows as two rows (the fault suite's
-- "double-applied" column counts them), where the event log's primary key would hide it.
CREATE TABLE mplink_transitions (
    message_id   TEXT NOT NULL,
    fact_key     TEXT NOT NULL,
    sub_key      TEXT NOT NULL,
    from_state   TEXT NOT NULL,
    to_state     TEXT NOT NULL,
    event_time   BIGINT NOT NULL,
    recorded_at  BIGINT NOT NULL
);
CREATE INDEX mplink_transitions_fact ON mplink_transitions (fact_key);
CREATE INDEX mplink_transitions_sub ON mplink_transitions (sub_key);
