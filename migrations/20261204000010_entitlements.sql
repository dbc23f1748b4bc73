-- Contract entitlements (issue 22): what AWS's GetEntitlements says a subscription may use.
--
-- A check is asked for in the transaction that applies an event that can change them
-- (entitlement-updated, License Updated, Agreement Amended, a confirmation) or links an
-- organization to the subscription. wanted_time is the newest such event (or link) time;
-- answered_time is the wanted_time the stored answer was fetched for, so a check asked for again
-- while one is in flight is fetched again, and an older ask never replaces a newer answer.
-- Portable SQL: SQLite and PostgreSQL; times are epoch milliseconds.
CREATE TABLE mplink_entitlement_checks (
    sub_key         TEXT PRIMARY KEY,
    wanted_time     BIGINT NOT NULL,
    answered_time   BIGINT,
    -- When AWS's answer was stored.
    answered_at     BIGINT,
    -- Failed attempts since the last answer; the backoff grows with them.
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    -- The last failure as AWS's code, message and request id (never a body or a secret).
    last_error      TEXT
);
CREATE INDEX mplink_entitlement_checks_due ON mplink_entitlement_checks (next_attempt_at);

-- The answer, one row per dimension: an answer with no entitlement leaves none (the check's
-- answered_time says it was asked). value_type: integer, double, boolean or string; value is
-- its text. expires_at: AWS's ExpirationDate (the contract's end), NULL when none.
CREATE TABLE mplink_entitlements (
    sub_key    TEXT NOT NULL,
    dimension  TEXT NOT NULL,
    value_type TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (sub_key, dimension)
);
