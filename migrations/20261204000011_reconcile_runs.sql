-- Scheduled reconciliation (issue 22): one row per product the worker reconciles, whose lease
-- lets one replica at a time run the pass, and whose times say when it last ran and succeeded.
-- last_report: the last pass's drift report (JSON), for the operator.
-- Portable SQL: SQLite and PostgreSQL; times are epoch milliseconds.
CREATE TABLE mplink_reconcile_runs (
    product_id      TEXT PRIMARY KEY,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_started_at BIGINT,
    last_finished_at BIGINT,
    last_success_at BIGINT,
    last_report     TEXT
);
