-- The ledger. Portable SQL: the same migration runs on SQLite and PostgreSQL.
-- Times are epoch milliseconds (BIGINT) so both backends compare them the same way.
-- Table names carry the mplink_ prefix: mplink owns these tables and nothing else in the database.

-- One row per AWS subscription: legacy (product code + customer identifier) or EventBridge agreement.
CREATE TABLE mplink_subscriptions (
    sub_key                 TEXT PRIMARY KEY,
    product_code            TEXT,
    customer_identifier     TEXT,
    customer_aws_account_id TEXT,
    agreement_id            TEXT,
    license_arn             TEXT,
    license_id              TEXT,
    previous_agreement_id   TEXT,
    state                   TEXT NOT NULL,
    state_time              BIGINT,
    state_rank              BIGINT,
    state_fact              TEXT,
    first_active_time       BIGINT,
    first_active_rank       BIGINT,
    first_active_fact       TEXT,
    handed_over_time        BIGINT,
    handed_over_rank        BIGINT,
    handed_over_fact        TEXT,
    last_event_time         BIGINT,
    version                 BIGINT NOT NULL,
    updated_at              BIGINT NOT NULL
);
CREATE INDEX mplink_subscriptions_license ON mplink_subscriptions (license_id);
CREATE INDEX mplink_subscriptions_customer ON mplink_subscriptions (product_code, customer_identifier);
CREATE INDEX mplink_subscriptions_account ON mplink_subscriptions (customer_aws_account_id, product_code);
CREATE INDEX mplink_subscriptions_previous ON mplink_subscriptions (previous_agreement_id);

-- One row per organization that asked to pay through AWS Marketplace (the registration).
-- link_key names the subscription the registration points at; one subscription bills one organization.
CREATE TABLE mplink_org_links (
    org_id                  TEXT PRIMARY KEY,
    link_key                TEXT NOT NULL UNIQUE,
    product_code            TEXT NOT NULL,
    customer_identifier     TEXT,
    customer_aws_account_id TEXT,
    license_arn             TEXT,
    requested_at            BIGINT NOT NULL
);

-- Append-only audit of every message mplink decided on. message_id is the delivery identity
-- (SNS MessageId, EventBridge id, SQS id for raw delivery; "rejected:<sqs id>" for rejections).
CREATE TABLE mplink_event_log (
    message_id      TEXT PRIMARY KEY,
    sqs_message_id  TEXT,
    fact_key        TEXT,
    sub_key         TEXT,
    action          TEXT,
    event_time      BIGINT,
    outcome         TEXT NOT NULL,
    reason          TEXT,
    body            TEXT NOT NULL,
    recorded_at     BIGINT NOT NULL
);
CREATE INDEX mplink_event_log_fact ON mplink_event_log (fact_key);
CREATE INDEX mplink_event_log_sub ON mplink_event_log (sub_key);
