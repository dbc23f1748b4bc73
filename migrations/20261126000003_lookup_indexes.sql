-- An index for every keyed lookup the store makes (src/store/view.rs), so linking, one
-- organization's status and the status pages cost the same on a large ledger as on an empty one.
-- Portable SQL: the same statements run on SQLite and PostgreSQL.
--
-- Already indexed by 20261126000001: subscriptions by sub_key (keyset pages), license_id,
-- (product_code, customer_identifier), (customer_aws_account_id, product_code) and
-- previous_agreement_id (a renewal's successors); links by org_id and link_key; the event log
-- by message_id and fact_key.

-- A renewal's predecessors: which links could have followed the chain to a subscription.
CREATE INDEX mplink_subscriptions_agreement ON mplink_subscriptions (agreement_id);

-- `status --customer-identifier`, page by page in sub_key order.
CREATE INDEX mplink_subscriptions_customer_page ON mplink_subscriptions (customer_identifier, sub_key);

-- `status --customer-identifier`: the customer's registrations, page by page in org_id order.
CREATE INDEX mplink_org_links_customer_page ON mplink_org_links (customer_identifier, org_id);

-- The last rejection of one SQS message (dead-letter tools).
CREATE INDEX mplink_event_log_sqs_message ON mplink_event_log (sqs_message_id, recorded_at);
