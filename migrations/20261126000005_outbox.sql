-- The outbox: one row per change of what an organization sees (its link's state, its payment
-- method, its link moving to another organization), written in the transaction that made the
-- change, so a notification exists exactly when the change committed.
--
-- seq comes from mplink_outbox_seq, a one-row counter updated in the same transaction: the row
-- lock orders writers, so sequences appear in commit order and a feed reader that remembers the
-- last seq it handled never skips a row committed later with a smaller one (as a SERIAL could).
-- Portable SQL: SQLite and PostgreSQL; times are epoch milliseconds.
CREATE TABLE mplink_outbox_seq (
    id       BIGINT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);
INSERT INTO mplink_outbox_seq (id, last_seq) VALUES (1, 0);

CREATE TABLE mplink_outbox (
    seq                     BIGINT PRIMARY KEY,
    event_id                TEXT NOT NULL UNIQUE,
    event_type              TEXT NOT NULL,
    org_id                  TEXT NOT NULL,
    -- link.moved: the organization that now holds the link.
    moved_to_org_id         TEXT,
    sub_key                 TEXT,
    product_code            TEXT,
    customer_identifier     TEXT,
    customer_aws_account_id TEXT,
    agreement_id            TEXT,
    license_arn             TEXT,
    state_before            TEXT,
    state_after             TEXT,
    payment_method_before   TEXT,
    payment_method          TEXT,
    event_time              BIGINT NOT NULL,
    -- The delivery (event log message_id) or the link request that caused the change.
    cause                   TEXT NOT NULL,
    created_at              BIGINT NOT NULL,
    -- Webhook delivery: pending, delivered, or failed (parked after the attempt limit; retryable).
    status                  TEXT NOT NULL,
    attempts                BIGINT NOT NULL,
    next_attempt_at         BIGINT NOT NULL,
    lease_owner             TEXT,
    lease_until             BIGINT,
    delivered_at            BIGINT,
    last_error              TEXT
);
CREATE INDEX mplink_outbox_org ON mplink_outbox (org_id, seq);
CREATE INDEX mplink_outbox_due ON mplink_outbox (status, next_attempt_at);
CREATE INDEX mplink_outbox_cause ON mplink_outbox (cause);
