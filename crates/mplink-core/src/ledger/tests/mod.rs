//! Examples of the ordering rule and of link resolution; [`property`] checks them against a model.

mod property;

use super::*;
use crate::event::*;
use proptest::prelude::*;
use std::collections::HashSet;

fn legacy(action: Action, time_ms: i64, id: &str) -> Event {
    Event {
        sqs_message_id: format!("sqs-{id}"),
        event_id: id.to_string(),
        fact_key: format!("sns:{id}"),
        time_ms,
        delivery: Delivery::SnsEnvelope,
        action,
        subject: SubjectKey::Customer {
            product_code: "prod".into(),
            customer_identifier: "cust".into(),
        },
        ids: Identifiers {
            product_code: Some("prod".into()),
            customer_identifier: Some("cust".into()),
            ..Identifiers::default()
        },
        details: Details::default(),
        topic_arn: None,
        source: None,
    }
}

fn fold(events: &[Event]) -> Subscription {
    let mut sub = Subscription::new(&events[0].subject);
    for e in events {
        sub = apply(&sub, e).next;
    }
    sub
}

fn link() -> LinkRequest {
    LinkRequest {
        org_id: "org".into(),
        product_code: "prod".into(),
        customer_identifier: Some("cust".into()),
        customer_aws_account_id: None,
        license_arn: None,
        requested_at_ms: 0,
    }
}

#[test]
fn the_seed_story_in_order() {
    let mut sub = Subscription::new(&legacy(Action::SubscribeSuccess, 0, "x").subject);
    assert_eq!(link_state_of(&sub), LinkState::Syncing);
    for (action, t, state, link_state) in [
        (
            Action::SubscribeSuccess,
            10,
            SubState::Active,
            LinkState::Linked,
        ),
        (
            Action::UnsubscribePending,
            20,
            SubState::Cancelling,
            LinkState::UnlinkPending,
        ),
        (
            Action::UnsubscribeSuccess,
            30,
            SubState::Cancelled,
            LinkState::Unlinked,
        ),
        (
            Action::SubscribeSuccess,
            40,
            SubState::Active,
            LinkState::Linked,
        ),
    ] {
        let d = apply(&sub, &legacy(action, t, &format!("m{t}")));
        assert_eq!(d.outcome, Outcome::Applied);
        sub = d.next;
        assert_eq!(sub.state, state);
        assert_eq!(link_state_of(&sub), link_state);
    }
}

#[test]
fn an_older_event_never_undoes_a_newer_one() {
    let newer = legacy(Action::UnsubscribeSuccess, 30, "b");
    let older = legacy(Action::UnsubscribePending, 20, "a");
    let sub = fold(std::slice::from_ref(&newer));
    let d = apply(&sub, &older);
    assert_eq!(d.outcome, Outcome::Stale);
    assert_eq!(d.next.state, SubState::Cancelled);
}

#[test]
fn the_same_event_twice_is_a_duplicate() {
    let e = legacy(Action::SubscribeSuccess, 10, "a");
    let sub = fold(std::slice::from_ref(&e));
    let d = apply(&sub, &e);
    assert_eq!(d.outcome, Outcome::Duplicate);
    assert_eq!(d.next, sub);
}

#[test]
fn ties_go_to_the_later_life_step() {
    let a = legacy(Action::SubscribeSuccess, 10, "a");
    let b = legacy(Action::UnsubscribeSuccess, 10, "b");
    assert_eq!(fold(&[a.clone(), b.clone()]).state, SubState::Cancelled);
    assert_eq!(fold(&[b, a]).state, SubState::Cancelled);
}

#[test]
fn failure_before_any_confirmation_fails_the_link_and_after_it_unlinks() {
    let fail = legacy(Action::SubscribeFail, 20, "f");
    assert_eq!(
        link_state_of(&fold(std::slice::from_ref(&fail))),
        LinkState::Failed
    );
    let ok = legacy(Action::SubscribeSuccess, 10, "s");
    // The late-arriving earlier confirmation still counts as history.
    let sub = fold(&[fail.clone(), ok.clone()]);
    assert_eq!(sub.state, SubState::Failed);
    assert_eq!(link_state_of(&sub), LinkState::Unlinked);
    assert_eq!(fold(&[ok, fail]), sub);
}

fn agreement(action: Action, agmt: &str, time_ms: i64, id: &str) -> Event {
    Event {
        sqs_message_id: format!("sqs-{id}"),
        event_id: id.into(),
        fact_key: format!("eb:{}:{agmt}:{time_ms}", action.name()),
        time_ms,
        delivery: Delivery::EventBridge,
        action,
        subject: SubjectKey::Agreement {
            agreement_id: agmt.into(),
        },
        ids: Identifiers {
            agreement_id: Some(agmt.into()),
            customer_aws_account_id: Some("111122223333".into()),
            ..Identifiers::default()
        },
        details: Details::default(),
        topic_arn: None,
        source: Some(crate::event::EVENTBRIDGE_SOURCE.into()),
    }
}

#[test]
fn a_renewal_hands_the_link_over_without_unlinking() {
    let lic = "arn:aws:license-manager::1:license:l-abc";
    let mut created = agreement(
        Action::AgreementCreated {
            party: Party::Proposer,
            intent: Intent::New,
        },
        "agmt-1",
        10,
        "e1",
    );
    created.ids.product_code = Some("prod".into());
    created.ids.license_arn = Some(lic.into());
    let old = fold(&[created]);
    let link = LinkRequest {
        license_arn: Some("l-abc".into()),
        customer_identifier: None,
        ..link()
    };
    assert_eq!(
        resolve_link(&link, std::slice::from_ref(&old)).state,
        LinkState::Linked
    );

    let ended = agreement(
        Action::AgreementEnded {
            party: Party::Proposer,
            status: EndStatus::Renewed,
        },
        "agmt-1",
        20,
        "e2",
    );
    let old = apply(&old, &ended).next;
    assert_eq!(old.state, SubState::Active);
    let view = resolve_link(&link, std::slice::from_ref(&old));
    assert_eq!(view.state, LinkState::Linked);

    let mut renewal = agreement(
        Action::AgreementCreated {
            party: Party::Proposer,
            intent: Intent::Renew,
        },
        "agmt-2",
        21,
        "e3",
    );
    renewal.ids.previous_agreement_id = Some("agmt-1".into());
    let new = fold(&[renewal]);
    let subs = vec![old, new];
    let view = resolve_link(&link, &subs);
    assert_eq!(view.state, LinkState::Linked);
    assert_eq!(view.subscription.unwrap().key, "agmt:agmt-2");
}

fn ended(status: EndStatus, agmt: &str, time_ms: i64, id: &str) -> Event {
    agreement(
        Action::AgreementEnded {
            party: Party::Proposer,
            status,
        },
        agmt,
        time_ms,
        id,
    )
}

fn created(intent: Intent, agmt: &str, time_ms: i64, id: &str) -> Event {
    agreement(
        Action::AgreementCreated {
            party: Party::Proposer,
            intent,
        },
        agmt,
        time_ms,
        id,
    )
}

fn account_link() -> LinkRequest {
    LinkRequest {
        customer_identifier: None,
        customer_aws_account_id: Some("111122223333".into()),
        ..link()
    }
}

/// An agreement of the test account for `prod`, with a license, after `events`.
fn held(agmt: &str, license: &str, events: &[Event]) -> Subscription {
    let mut sub = fold(events);
    sub.product_code = Some("prod".into());
    sub.license_arn = Some(format!("arn:aws:license-manager::1:license:{license}"));
    assert_eq!(sub.agreement_id.as_deref(), Some(agmt));
    sub
}

#[test]
fn a_hand_over_ends_when_a_later_fact_of_the_same_agreement_arrives() {
    let history = [
        created(Intent::New, "agmt-1", 10, "e1"),
        ended(EndStatus::Renewed, "agmt-1", 20, "e2"),
        ended(EndStatus::Cancelled, "agmt-1", 30, "e3"),
    ];
    let sub = held("agmt-1", "l-1", &history);
    assert!(!sub.is_handed_over());
    let view = resolve_link(&account_link(), std::slice::from_ref(&sub));
    assert_eq!(view.state, LinkState::UnlinkPending);
    // In any arrival order.
    let reversed: Vec<Event> = history.iter().rev().cloned().collect();
    assert_eq!(held("agmt-1", "l-1", &reversed), sub);
    // The renewal alone, or after an older cancellation, still hands over.
    let renewed_last = held(
        "agmt-1",
        "l-1",
        &[
            history[0].clone(),
            ended(EndStatus::Cancelled, "agmt-1", 15, "e4"),
            history[1].clone(),
        ],
    );
    assert!(renewed_last.is_handed_over());
    assert_eq!(link_state_of(&renewed_last), LinkState::Linked);
}

#[test]
fn a_link_by_account_takes_the_live_unclaimed_agreement_whatever_the_order() {
    let cancelled = held(
        "agmt-old",
        "l-old",
        &[
            created(Intent::New, "agmt-old", 10, "o1"),
            ended(EndStatus::Cancelled, "agmt-old", 50, "o2"),
        ],
    );
    let active = held(
        "agmt-live",
        "l-live",
        &[created(Intent::New, "agmt-live", 20, "l1")],
    );
    let newer_active = held(
        "agmt-new",
        "l-new",
        &[created(Intent::New, "agmt-new", 30, "n1")],
    );
    let link = account_link();
    for subs in [
        vec![cancelled.clone(), active.clone()],
        vec![active.clone(), cancelled.clone()],
    ] {
        let view = resolve_link(&link, &subs);
        assert_eq!(view.subscription.unwrap().key, "agmt:agmt-live");
        assert_eq!(view.state, LinkState::Linked);
    }
    // Two live agreements: the one confirmed last, unless a license-keyed link claims it.
    let subs = vec![newer_active.clone(), active.clone(), cancelled.clone()];
    assert_eq!(
        resolve_link(&link, &subs).subscription.unwrap().key,
        "agmt:agmt-new"
    );
    let claimed: HashSet<&str> = ["l-new"].into_iter().collect();
    assert_eq!(
        resolve_link_among(&link, &subs, &claimed)
            .subscription
            .unwrap()
            .key,
        "agmt:agmt-live"
    );
    // A license-keyed link is never turned away by a claim: the claim is its own.
    let by_license = LinkRequest {
        license_arn: Some("l-new".into()),
        ..account_link()
    };
    assert_eq!(
        resolve_link_among(&by_license, &subs, &claimed)
            .subscription
            .unwrap()
            .key,
        "agmt:agmt-new"
    );
}

#[test]
fn registration_without_events_is_syncing_and_matches_by_specific_key() {
    assert_eq!(resolve_link(&link(), &[]).state, LinkState::Syncing);
    let mut other = Subscription::new(&SubjectKey::Customer {
        product_code: "prod".into(),
        customer_identifier: "someone-else".into(),
    });
    other.state = SubState::Active;
    assert_eq!(resolve_link(&link(), &[other]).state, LinkState::Syncing);
}

#[test]
fn a_cycle_of_agreements_still_carries_the_link_it_names() {
    let lic = "arn:aws:license-manager::1:license:l-cyc";
    let created = |agmt: &str, previous: &str, time_ms: i64, id: &str, license: Option<&str>| {
        let mut e = agreement(
            Action::AgreementCreated {
                party: Party::Proposer,
                intent: Intent::Renew,
            },
            agmt,
            time_ms,
            id,
        );
        e.ids.product_code = Some("prod".into());
        e.ids.license_arn = license.map(str::to_string);
        e.ids.previous_agreement_id = Some(previous.into());
        fold(&[e])
    };
    // Each names the other as its predecessor: both are superseded.
    let subs = vec![
        created("agmt-a", "agmt-b", 10, "e1", Some(lic)),
        created("agmt-b", "agmt-a", 20, "e2", None),
    ];
    let link = LinkRequest {
        license_arn: Some("l-cyc".into()),
        customer_identifier: None,
        ..link()
    };
    let view = resolve_link(&link, &subs);
    assert!(
        view.subscription.is_some(),
        "a link that names a subscription resolved to none: {view:?}"
    );
}

// ---- property test against a simple model -------------------------------------------
