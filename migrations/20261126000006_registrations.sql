-- Registrations: what ResolveCustomer said about a buyer who landed from AWS Marketplace, kept
-- until the host application links an organization to it (POST /v1/registrations/{id}/link).
-- Portable SQL: the same statements run on SQLite and PostgreSQL; times are epoch milliseconds.
--
-- id is the opaque, unguessable identifier the buyer's browser carries to the host's
-- "Select an Organization to Link" page (reg_ + 128 random bits in hex).
-- token_sha256 is the SHA-256 of the x-amzn-marketplace-token: the same token posted twice finds
-- the same registration, and the token itself (a bearer credential for ResolveCustomer) is never
-- stored.
-- The subscription is named by customer_aws_account_id + license_arn (new integrations get only
-- those); customer_identifier is kept when AWS still returns one (legacy listings).
CREATE TABLE mplink_registrations (
    id                      TEXT PRIMARY KEY,
    token_sha256            TEXT NOT NULL UNIQUE,
    product_code            TEXT NOT NULL,
    customer_aws_account_id TEXT,
    license_arn             TEXT,
    customer_identifier     TEXT,
    offer_type              TEXT,
    created_at              BIGINT NOT NULL,
    expires_at              BIGINT NOT NULL,
    -- The organization linked through this registration (at most one), and when.
    linked_org_id           TEXT,
    linked_at               BIGINT
);
CREATE INDEX mplink_registrations_customer ON mplink_registrations (customer_aws_account_id, license_arn);
