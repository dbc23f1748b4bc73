-- Usage allocations (issue 24): a usage report may carry up to five key/value tags, and a meter
-- record's usage is split by tag set into AWS's UsageAllocations, which the buyer sees in Cost
-- Explorer by tag.
-- tags: the report's tags as a JSON object with its keys in order ('' for none), so equal sets
-- group together in SQL.
ALTER TABLE mplink_usage ADD COLUMN tags TEXT NOT NULL DEFAULT '';
-- allocations: the record's allocations as a JSON list of {"tags", "quantity"}, fixed when the
-- record is written so every resend carries the same list; NULL when none of its usage was
-- tagged (sent without UsageAllocations).
ALTER TABLE mplink_meter_records ADD COLUMN allocations TEXT;
-- An organization's usage by hour (GET /v1/organizations/{org_id}/usage, mplink usage show):
-- a keyed range read, not a scan.
CREATE INDEX mplink_usage_org_hour ON mplink_usage (org_id, usage_hour);
