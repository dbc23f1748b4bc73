-- The subscription's details besides its state (offer id, free trial, agreement start/end and
-- acceptance times, auto-renewal, proposer, resale authorization, product id, and the newest
-- ending, renewal, advisory, cancellation-request and billing-adjustment notices), each with the
-- stamp of the event that said it so that an older event never overwrites a newer one.
-- One JSON text column (the ledger's SubscriptionDetails, serialised in src/store/rows.rs):
-- portable across SQLite and PostgreSQL, and NULL on rows written before this migration.
ALTER TABLE mplink_subscriptions ADD COLUMN details TEXT;
