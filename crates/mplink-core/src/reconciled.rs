//! Reconciliation, pure: what AWS's Agreement API says about one agreement, turned into the
//! `reconciled` facts that go through the ledger's rules like any event. No I/O: mplink's
//! `reconcile` module asks AWS and applies them.
//!
//! A fact's id is the agreement and the status AWS states, so a rerun (after a crash, or the next
//! scheduled pass) finds the same facts already recorded and changes nothing; its time is the
//! time AWS states for that status (acceptance or start for ACTIVE, end for an ended one), or the
//! time it was observed when AWS gives none.

use crate::event::{
    Action, Delivery, Details, EndStatus, Event, Identifiers, Intent, Party, SubjectKey,
};
use crate::ledger::SubState;

/// The prefix of every reconciled fact's id (`mplink_event_log.message_id`).
pub const RECONCILED_PREFIX: &str = "reconciled:";

/// One agreement as `SearchAgreements` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AwsAgreement {
    /// `agreementId`.
    pub agreement_id: String,
    /// `status`: ACTIVE, CANCELLED, EXPIRED, RENEWED, REPLACED, ROLLED_BACK, SUPERSEDED,
    /// TERMINATED, ARCHIVED.
    pub status: String,
    /// `acceptor.accountId`: the buyer.
    pub acceptor_account_id: Option<String>,
    /// `proposalSummary.resources[].id` of the product.
    pub product_id: Option<String>,
    /// `proposalSummary.offerId`.
    pub offer_id: Option<String>,
    /// `entitlements[].licenseArn`: the license the agreement grants.
    pub license_arn: Option<String>,
    /// `acceptanceTime`, epoch ms.
    pub acceptance_ms: Option<i64>,
    /// `startTime`, epoch ms.
    pub start_ms: Option<i64>,
    /// `endTime`, epoch ms.
    pub end_ms: Option<i64>,
    /// `lastUpdateTime`, epoch ms.
    pub last_update_ms: Option<i64>,
    /// The license's status as `GetAgreementEntitlements` states it (PROVISIONED, SCHEDULED,
    /// PENDING, FAILED, DEPROVISIONED); None when it was not asked.
    pub license_status: Option<String>,
}

/// The license status AWS gives a deprovisioned license.
pub const DEPROVISIONED: &str = "DEPROVISIONED";

/// What AWS's status means for the subscription: live, or ended in one of the ways the
/// EventBridge events name (a renewal or replacement hands the link to its successor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    Active,
    Ended(EndStatus),
}

fn reading(status: &str) -> Option<Reading> {
    Some(match status {
        "ACTIVE" => Reading::Active,
        "CANCELLED" => Reading::Ended(EndStatus::Cancelled),
        "EXPIRED" | "ARCHIVED" => Reading::Ended(EndStatus::Expired),
        "TERMINATED" | "ROLLED_BACK" => Reading::Ended(EndStatus::Terminated),
        "RENEWED" => Reading::Ended(EndStatus::Renewed),
        "REPLACED" | "SUPERSEDED" => Reading::Ended(EndStatus::Replaced),
        _ => return None,
    })
}

/// True when the ledger's `state` already says what AWS says about `a` at `observed_ms`: ACTIVE
/// once it is active; an ended agreement once it is cancelling, and cancelled once the final
/// usage hour after its end has passed; a renewed or replaced one once it handed over.
pub fn agrees(
    a: &AwsAgreement,
    state: Option<SubState>,
    handed_over: bool,
    observed_ms: i64,
) -> bool {
    let Some(reading) = reading(&a.status) else {
        return true;
    };
    match (reading, state) {
        (Reading::Ended(end), _) if end.hands_over() => handed_over,
        (_, None) => false,
        (Reading::Active, Some(s)) => s == SubState::Active,
        (Reading::Ended(_), Some(s)) if deprovisioned(a, observed_ms).is_some() => {
            s == SubState::Cancelled
        }
        (Reading::Ended(_), Some(s)) => matches!(s, SubState::Cancelling | SubState::Cancelled),
    }
}

/// When an ended agreement's license was deprovisioned, if it was by `observed_ms`. Asked
/// (`license_status`), AWS's word decides, dated the end of the final usage hour or the
/// observation, whichever is first (AWS states no time for it); not asked, the license is taken
/// as deprovisioned once the hour for the final usage after the end has passed, as AWS does.
pub fn deprovisioned(a: &AwsAgreement, observed_ms: i64) -> Option<i64> {
    let Reading::Ended(end) = reading(&a.status)? else {
        return None;
    };
    if end.hands_over() {
        return None;
    }
    let at = ended_at(a, observed_ms) + FINAL_USAGE_MS;
    match a.license_status.as_deref() {
        Some(status) => (status == DEPROVISIONED).then_some(at.min(observed_ms)),
        None => (at <= observed_ms).then_some(at),
    }
}

/// True when AWS's license status is worth asking for `a`: it ended without a successor (its
/// deprovisioning moves the ledger from cancelling to cancelled), and the ledger has not got there.
pub fn asks_license(a: &AwsAgreement, state: Option<SubState>) -> bool {
    matches!(reading(&a.status), Some(Reading::Ended(end)) if !end.hands_over())
        && state != Some(SubState::Cancelled)
}

/// The hour a seller has after an agreement ends to send its last usage.
const FINAL_USAGE_MS: i64 = 3_600_000;

fn accepted_at(a: &AwsAgreement, observed_ms: i64) -> i64 {
    a.acceptance_ms.or(a.start_ms).unwrap_or(observed_ms)
}

fn ended_at(a: &AwsAgreement, observed_ms: i64) -> i64 {
    a.end_ms
        .or(a.last_update_ms)
        .unwrap_or(observed_ms)
        .max(accepted_at(a, observed_ms))
}

/// True when mplink knows what `status` means (an unknown one is reported, never applied).
pub fn known_status(status: &str) -> bool {
    reading(status).is_some()
}

fn fact(a: &AwsAgreement, tag: &str, time_ms: i64, action: Action, observed_ms: i64) -> Event {
    let id = format!("{RECONCILED_PREFIX}{}:{tag}", a.agreement_id);
    Event {
        sqs_message_id: id.clone(),
        event_id: id.clone(),
        fact_key: id,
        // A reconciled fact's time never lies in the future of its observation.
        time_ms: time_ms.min(observed_ms),
        delivery: Delivery::Reconciled,
        action,
        subject: SubjectKey::Agreement {
            agreement_id: a.agreement_id.clone(),
        },
        ids: Identifiers {
            product_code: None,
            customer_identifier: None,
            customer_aws_account_id: a.acceptor_account_id.clone(),
            agreement_id: Some(a.agreement_id.clone()),
            license_arn: a.license_arn.clone(),
            previous_agreement_id: None,
            offer_id: a.offer_id.clone(),
        },
        details: Details {
            agreement_start_ms: a.start_ms,
            agreement_end_ms: a.end_ms,
            acceptance_ms: a.acceptance_ms,
            product_id: a.product_id.clone(),
            ..Details::default()
        },
        topic_arn: None,
        source: None,
    }
}

/// The facts that make the ledger say what AWS says about `a`, observed at `observed_ms`: the
/// agreement's acceptance (every agreement AWS lists was accepted once); for an ended one its end,
/// and once the final usage hour has passed its license's deprovisioning. Empty for a status
/// mplink does not know.
pub fn facts(a: &AwsAgreement, product_code: Option<&str>, observed_ms: i64) -> Vec<Event> {
    let Some(reading) = reading(&a.status) else {
        return Vec::new();
    };
    let created = Action::AgreementCreated {
        party: Party::Proposer,
        intent: Intent::New,
    };
    let mut out = vec![fact(
        a,
        "ACCEPTED",
        accepted_at(a, observed_ms),
        created,
        observed_ms,
    )];
    if let Reading::Ended(status) = reading {
        let ended = Action::AgreementEnded {
            party: Party::Proposer,
            status,
        };
        out.push(fact(
            a,
            &a.status,
            ended_at(a, observed_ms),
            ended,
            observed_ms,
        ));
    }
    if let Some(at) = deprovisioned(a, observed_ms) {
        out.push(fact(
            a,
            "DEPROVISIONED",
            at,
            Action::LicenseDeprovisioned,
            observed_ms,
        ));
    }
    for e in &mut out {
        e.ids.product_code = product_code.map(str::to_string);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agreement(status: &str) -> AwsAgreement {
        AwsAgreement {
            agreement_id: "agmt-1".into(),
            status: status.into(),
            acceptor_account_id: Some("111122223333".into()),
            acceptance_ms: Some(1_000),
            end_ms: Some(5_000),
            ..AwsAgreement::default()
        }
    }

    #[test]
    fn an_ended_agreement_is_its_acceptance_its_end_and_after_the_final_hour_its_license() {
        let f = facts(&agreement("CANCELLED"), Some("code-1"), 9_000);
        let got: Vec<(&str, i64, &str)> = f
            .iter()
            .map(|e| (e.event_id.as_str(), e.time_ms, e.action.name()))
            .collect();
        assert_eq!(
            got,
            [
                ("reconciled:agmt-1:ACCEPTED", 1_000, "agreement-created"),
                ("reconciled:agmt-1:CANCELLED", 5_000, "agreement-ended"),
            ]
        );
        assert!(f
            .iter()
            .all(|e| e.ids.product_code.as_deref() == Some("code-1")));
        let later = facts(&agreement("CANCELLED"), None, 5_000 + FINAL_USAGE_MS);
        assert_eq!(later.len(), 3);
        assert_eq!(later[2].event_id, "reconciled:agmt-1:DEPROVISIONED");
        assert_eq!(later[2].time_ms, 5_000 + FINAL_USAGE_MS);
        assert_eq!(facts(&agreement("ACTIVE"), None, 9_000).len(), 1);
        assert_eq!(facts(&agreement("RENEWED"), None, i64::MAX).len(), 2);
        assert!(facts(&agreement("PENDING_SOMETHING"), None, 9_000).is_empty());
    }

    #[test]
    fn without_a_time_from_aws_the_observation_is_the_time_and_never_the_future() {
        let mut a = agreement("EXPIRED");
        a.acceptance_ms = None;
        a.end_ms = None;
        let f = facts(&a, None, 7_000);
        assert_eq!((f[0].time_ms, f[1].time_ms), (7_000, 7_000));
        let mut future = agreement("ACTIVE");
        future.acceptance_ms = Some(99_000);
        assert_eq!(facts(&future, None, 7_000)[0].time_ms, 7_000);
    }

    #[test]
    fn the_license_status_aws_states_decides_the_deprovisioning() {
        let mut a = agreement("CANCELLED");
        a.license_status = Some("PROVISIONED".into());
        let late = 5_000 + 2 * FINAL_USAGE_MS;
        assert_eq!(
            facts(&a, None, late).len(),
            2,
            "still provisioned: no deprovisioning"
        );
        assert!(agrees(&a, Some(SubState::Cancelling), false, late));
        a.license_status = Some(DEPROVISIONED.into());
        let early = 6_000;
        let f = facts(&a, None, early);
        assert_eq!(f.len(), 3);
        assert_eq!(f[2].time_ms, early, "dated no later than its observation");
        assert_eq!(facts(&a, None, late)[2].time_ms, 5_000 + FINAL_USAGE_MS);
        assert!(asks_license(&a, Some(SubState::Cancelling)));
        assert!(!asks_license(&a, Some(SubState::Cancelled)));
        assert!(!asks_license(&agreement("RENEWED"), None));
        assert!(!asks_license(&agreement("ACTIVE"), None));
    }

    #[test]
    fn agreement_with_the_ledger() {
        let at = |s: &str| agreement(s);
        assert!(agrees(&at("ACTIVE"), Some(SubState::Active), false, 9_000));
        assert!(!agrees(&at("ACTIVE"), None, false, 9_000));
        assert!(!agrees(
            &at("CANCELLED"),
            Some(SubState::Active),
            false,
            9_000
        ));
        assert!(agrees(
            &at("CANCELLED"),
            Some(SubState::Cancelling),
            false,
            9_000
        ));
        let after_hour = 5_000 + FINAL_USAGE_MS;
        assert!(!agrees(
            &at("EXPIRED"),
            Some(SubState::Cancelling),
            false,
            after_hour
        ));
        assert!(agrees(
            &at("EXPIRED"),
            Some(SubState::Cancelled),
            false,
            after_hour
        ));
        assert!(!agrees(
            &at("RENEWED"),
            Some(SubState::Active),
            false,
            9_000
        ));
        assert!(agrees(&at("RENEWED"), Some(SubState::Active), true, 9_000));
        assert!(
            agrees(&at("SOMETHING_NEW"), None, false, 9_000),
            "unknown: no drift"
        );
    }
}
