-- Usage metering (issue 13). Portable SQL: SQLite and PostgreSQL; times are epoch milliseconds.

-- One row per usage report the host sent, accepted or refused, keyed by the report's idempotency
-- key: the same key again answers the same way and counts once. Accepted rows name the
-- subscription the organization was linked to when the report came.
CREATE TABLE mplink_usage (
    idempotency_key TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL,
    sub_key         TEXT,
    dimension       TEXT NOT NULL,
    quantity        BIGINT NOT NULL,
    usage_time      BIGINT NOT NULL,
    usage_hour      BIGINT NOT NULL,
    -- accepted, or refused (with reason: not_linked, subscription_cancelled, hour_closed, ...).
    status          TEXT NOT NULL,
    reason          TEXT,
    recorded_at     BIGINT NOT NULL
);
CREATE INDEX mplink_usage_sub_hour ON mplink_usage (sub_key, usage_hour);
CREATE INDEX mplink_usage_hour ON mplink_usage (usage_hour, status);

-- One row per (subscription, dimension, hour) sent or to send to BatchMeterUsage. The quantity
-- and record time are fixed when the row is written, so every resend carries the same record.
-- status: unsent, Success, CustomerNotSubscribed, DuplicateRecord, expired (past AWS's window,
-- never sent), stopped (the customer is not subscribed any more, never sent), failed (parked
-- after the attempt limit; `mplink meter retry` puts it back).
CREATE TABLE mplink_meter_records (
    sub_key                 TEXT NOT NULL,
    dimension               TEXT NOT NULL,
    usage_hour              BIGINT NOT NULL,
    record_time             BIGINT NOT NULL,
    quantity                BIGINT NOT NULL,
    product_code            TEXT NOT NULL,
    customer_aws_account_id TEXT,
    license_arn             TEXT,
    customer_identifier     TEXT,
    -- final: written by the final-usage close of a cancelled subscription.
    final                   BIGINT NOT NULL,
    status                  TEXT NOT NULL,
    metering_record_id      TEXT,
    attempts                BIGINT NOT NULL,
    next_attempt_at         BIGINT NOT NULL,
    lease_owner             TEXT,
    lease_until             BIGINT,
    last_error              TEXT,
    created_at              BIGINT NOT NULL,
    sent_at                 BIGINT,
    PRIMARY KEY (sub_key, dimension, usage_hour)
);
CREATE INDEX mplink_meter_records_due ON mplink_meter_records (status, next_attempt_at);
CREATE INDEX mplink_meter_records_hour ON mplink_meter_records (usage_hour);

-- Hours closed for every subscription: their usage became meter records once, by one replica.
CREATE TABLE mplink_meter_hours (
    usage_hour BIGINT PRIMARY KEY,
    closed_at  BIGINT NOT NULL,
    closed_by  TEXT NOT NULL
);

-- Subscriptions whose metering ended: the final usage was closed after cancellation
-- (reason final), or AWS answered CustomerNotSubscribed (reason not_subscribed). Usage reported
-- for them afterwards is refused.
CREATE TABLE mplink_meter_ended (
    sub_key   TEXT PRIMARY KEY,
    reason    TEXT NOT NULL,
    last_hour BIGINT NOT NULL,
    ended_at  BIGINT NOT NULL
);

-- One row whose lock orders usage writers (shared) against closers (exclusive) on PostgreSQL,
-- so no usage commits into an hour while it is being closed; SQLite has one writer at a time.
CREATE TABLE mplink_meter_lock (
    id BIGINT PRIMARY KEY
);
INSERT INTO mplink_meter_lock (id) VALUES (1);
