-- A registration belongs to the host's user who first asked about it: the host sends its
-- signed-in user's stable id with every organizations and link request, the first one claims
-- the registration, and any other user is refused (403 registration_claimed), so a leaked
-- registration id cannot link someone else's organization to the buyer's subscription.
-- `mplink registration release ID` clears a wrong claim.
ALTER TABLE mplink_registrations ADD COLUMN claimed_by TEXT;
ALTER TABLE mplink_registrations ADD COLUMN claimed_at BIGINT;
