//! Every order of the same events gives the state a simple model gives.

use super::*;

/// The model: sort every event by (time, rank, fact key) and walk the transitions.
fn model(events: &[Event]) -> (SubState, LinkState) {
    let mut sorted: Vec<(Stamp, Effect)> = events
        .iter()
        .filter_map(|e| match effect(&e.action) {
            Effect::Transition(t) => Some((Stamp::of(e, rank(t)), Effect::Transition(t))),
            _ => None,
        })
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted.dedup_by(|a, b| a.0 == b.0);
    let mut state = SubState::Pending;
    let mut ever_active = false;
    let mut failed_after_active = false;
    let last = sorted.last().map(|(stamp, _)| stamp.clone());
    for (_, eff) in sorted {
        if let Effect::Transition(t) = eff {
            failed_after_active = t == SubState::Failed && ever_active;
            ever_active |= t == SubState::Active;
            state = t;
        }
    }
    // A hand-over holds while it is the agreement's newest fact.
    let newest_hand_over = events
        .iter()
        .filter(|e| effect(&e.action) == Effect::HandOver)
        .map(|e| Stamp::of(e, rank(SubState::Active)))
        .max();
    let handed_over = match (newest_hand_over, last) {
        (Some(h), Some(l)) => h > l,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let link = match state {
        // A renewal or replacement never unlinks.
        _ if handed_over => LinkState::Linked,
        SubState::Pending => LinkState::Syncing,
        SubState::Active => LinkState::Linked,
        SubState::Failed if failed_after_active => LinkState::Unlinked,
        SubState::Failed => LinkState::Failed,
        SubState::Cancelling => LinkState::UnlinkPending,
        SubState::Cancelled => LinkState::Unlinked,
    };
    (state, link)
}

fn arb_history() -> impl Strategy<Value = Vec<Event>> {
    let action = prop_oneof![
        Just(Action::SubscribeSuccess),
        Just(Action::SubscribeFail),
        Just(Action::UnsubscribePending),
        Just(Action::UnsubscribeSuccess),
        Just(Action::EntitlementUpdated),
    ];
    // Few distinct times so that ties are common.
    prop::collection::vec((action, 0i64..6), 1..12).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (a, t))| legacy(a, t, &format!("m{i}")))
            .collect()
    })
}

/// Agreement histories: each fact may arrive as both its Proposer and Manufacturer copy
/// (same fact key, different event ids), plus license events.
fn arb_agreement_history() -> impl Strategy<Value = Vec<Event>> {
    let status = prop_oneof![
        Just(EndStatus::Cancelled),
        Just(EndStatus::Expired),
        Just(EndStatus::Terminated),
        Just(EndStatus::Renewed),
        Just(EndStatus::Replaced),
    ];
    let kind = prop_oneof![
        Just(0u8),
        Just(1u8),
        status.prop_map(|s| 2 + s as u8),
        Just(10u8),
        Just(11u8),
    ];
    prop::collection::vec((kind, 0i64..6, any::<bool>()), 1..10).prop_map(|raw| {
        let statuses = [
            EndStatus::Cancelled,
            EndStatus::Expired,
            EndStatus::Terminated,
            EndStatus::Renewed,
            EndStatus::Replaced,
        ];
        let mut events = Vec::new();
        for (i, (k, t, both_copies)) in raw.into_iter().enumerate() {
            let with_party = |party: Party| match k {
                0 => Action::AgreementCreated {
                    party,
                    intent: Intent::New,
                },
                1 => Action::AgreementAmended { party },
                10 => Action::LicenseUpdated,
                11 => Action::LicenseDeprovisioned,
                s => Action::AgreementEnded {
                    party,
                    status: statuses[(s - 2) as usize],
                },
            };
            let first = with_party(Party::Proposer);
            let mut e = agreement(first, "agmt-p", t * 1000, &format!("ev{i}p"));
            // The fact key ignores the party, as the decoder's does.
            e.fact_key = format!("eb:{}:agmt-p:{}:{i}", first.name(), t * 1000);
            let copy_needed = both_copies && !matches!(k, 10 | 11);
            events.push(e.clone());
            if copy_needed {
                let mut m = e;
                m.event_id = format!("ev{i}m");
                m.action = with_party(Party::Manufacturer);
                events.push(m);
            }
        }
        events
    })
}

/// A deterministic shuffle driven by proptest's seed.
fn shuffled(mut events: Vec<Event>, seed: u64) -> Vec<Event> {
    let mut rng = seed;
    for i in (1..events.len()).rev() {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        events.swap(i, (rng >> 33) as usize % (i + 1));
    }
    events
}

/// Chains `agmt-0 → agmt-1 → …` (each created with intent RENEW naming its predecessor),
/// with random lifecycle events on each, plus a concurrent unrelated agreement of the same
/// account. The model: the link follows the chain to the newest agreement whose Created
/// (RENEW) event was delivered; that agreement's own events decide the link state.
fn arb_chain() -> impl Strategy<Value = (Vec<Vec<Event>>, Vec<Event>)> {
    let step = (0u8..4, 0i64..6);
    let agreement_events = prop::collection::vec(step, 0..5);
    (
        prop::collection::vec((any::<bool>(), agreement_events), 1..4),
        prop::collection::vec((0u8..4, 0i64..6), 0..4),
    )
        .prop_map(|(chain, concurrent)| {
            let build = |agmt: &str, n: usize, k: u8, t: i64, j: usize| -> Event {
                let id = format!("{agmt}-{j}");
                let time = (n as i64) * 100 + t * 10;
                match k {
                    0 => ended(EndStatus::Cancelled, agmt, time, &id),
                    1 => ended(EndStatus::Renewed, agmt, time, &id),
                    2 => agreement(Action::LicenseDeprovisioned, agmt, time, &id),
                    _ => agreement(
                        Action::AgreementAmended {
                            party: Party::Proposer,
                        },
                        agmt,
                        time,
                        &id,
                    ),
                }
            };
            let mut links = Vec::new();
            for (n, (delivered_created, rest)) in chain.into_iter().enumerate() {
                let agmt = format!("agmt-{n}");
                let mut events = Vec::new();
                // The first agreement is always created; a successor may not be yet.
                if n == 0 || delivered_created {
                    let intent = if n == 0 { Intent::New } else { Intent::Renew };
                    let mut c = created(intent, &agmt, n as i64 * 100, &format!("{agmt}-c"));
                    if n > 0 {
                        c.ids.previous_agreement_id = Some(format!("agmt-{}", n - 1));
                    }
                    events.push(c);
                }
                for (j, (k, t)) in rest.into_iter().enumerate() {
                    events.push(build(&agmt, n, k, t, j));
                }
                links.push(events);
            }
            let other = std::iter::once(created(Intent::New, "agmt-x", 5, "agmt-x-c"))
                .chain(
                    concurrent
                        .into_iter()
                        .enumerate()
                        .map(|(j, (k, t))| build("agmt-x", 0, k, t, j)),
                )
                .collect();
            (links, other)
        })
}

fn subs_of(events: &[Event]) -> Vec<Subscription> {
    let mut by_key: std::collections::BTreeMap<String, Subscription> = Default::default();
    for e in events {
        let key = e.subject.as_key();
        let current = by_key
            .remove(&key)
            .unwrap_or_else(|| Subscription::new(&e.subject));
        by_key.insert(key, apply(&current, e).next);
    }
    by_key.into_values().collect()
}

/// Agreement events that carry details: creations with an offer and an end time, and the
/// informational notices, at few distinct times so that ties happen.
fn arb_detail_history() -> impl Strategy<Value = Vec<Event>> {
    let notice = prop_oneof![
        Just(Notice::Ending),
        Just(Notice::RenewalUpcoming),
        Just(Notice::AdvisoryIssued),
        Just(Notice::AdvisoryResolved),
        Just(Notice::CancellationRequest(
            CancellationRequestStatus::PendingApproval
        )),
        Just(Notice::CancellationRequest(
            CancellationRequestStatus::Approved
        )),
        Just(Notice::CancellationRequest(
            CancellationRequestStatus::Rejected
        )),
        Just(Notice::BillingAdjustment(
            BillingAdjustmentStatus::Completed
        )),
    ];
    let one = (prop::option::of(notice), 0i64..4, 0u8..3, 0i64..3);
    prop::collection::vec(one, 1..10).prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (notice, t, offer, end))| {
                let action = match notice {
                    Some(notice) => Action::AgreementNotice {
                        party: Party::Proposer,
                        notice,
                    },
                    None => Action::AgreementCreated {
                        party: Party::Proposer,
                        intent: Intent::New,
                    },
                };
                let mut e = agreement(action, "agmt-d", t * 1000, &format!("d{i}"));
                e.fact_key = format!("eb:{}:agmt-d:{}:{i}", action.name(), t * 1000);
                e.ids.offer_id = (offer > 0).then(|| format!("offer-{offer}"));
                e.details.agreement_end_ms = (end > 0).then_some(end * 1_000_000);
                e
            })
            .collect()
    })
}

/// What an organization linked to the subscription is told as `delivered` arrives, the
/// way the store decides it: a delivery seen before is dropped by the event log; each other
/// event's view before and after gives the `link.*` type, if any. Returns (outcome, type)
/// per delivery and the final link state.
fn told(
    delivered: &[Event],
    view: impl Fn(&Subscription) -> LinkState,
) -> (Vec<(Outcome, Option<crate::notify::EventType>)>, LinkState) {
    let mut sub = Subscription::new(&delivered[0].subject);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in delivered {
        if !seen.insert(e.event_id.clone()) {
            out.push((Outcome::Duplicate, None));
            continue;
        }
        let decision = apply(&sub, e);
        let change = crate::notify::change_type(Some(view(&sub)), view(&decision.next));
        out.push((decision.outcome, change));
        sub = decision.next;
    }
    (out, view(&sub))
}

/// The link's types end in the model's final state (or there are none and the model stays
/// where the link started), and duplicates and stale events tell nothing.
fn check_told(
    told: &[(Outcome, Option<crate::notify::EventType>)],
    model_state: LinkState,
) -> Result<(), TestCaseError> {
    let types: Vec<crate::notify::EventType> = told.iter().filter_map(|(_, t)| *t).collect();
    prop_assert_eq!(
        types.last().copied(),
        (model_state != LinkState::Syncing || !types.is_empty())
            .then(|| crate::notify::EventType::entering(model_state)),
        "types {:?}",
        types
    );
    for (outcome, t) in told {
        if matches!(outcome, Outcome::Duplicate | Outcome::Stale) {
            prop_assert_eq!(*t, None, "a {} event told something", outcome);
        }
    }
    // No two consecutive rows repeat a type: each is a change.
    prop_assert!(types.windows(2).all(|w| w[0] != w[1]), "types {:?}", types);
    Ok(())
}

#[test]
fn check_told_catches_a_wrong_final_type_and_a_told_duplicate() {
    use crate::notify::EventType;
    let ok = [(Outcome::Applied, Some(EventType::Linked))];
    assert!(check_told(&ok, LinkState::Linked).is_ok());
    assert!(check_told(&ok, LinkState::Unlinked).is_err());
    let dup = [
        (Outcome::Applied, Some(EventType::Linked)),
        (Outcome::Duplicate, Some(EventType::Linked)),
    ];
    assert!(check_told(&dup, LinkState::Linked).is_err());
    assert!(check_told(&[(Outcome::Applied, None)], LinkState::Syncing).is_ok());
}

proptest! {
    #[test]
    fn details_in_any_order_are_the_newest_of_each(
        history in arb_detail_history(),
        seed in any::<u64>(),
    ) {
        let sub = fold(&shuffled(history.clone(), seed));
        prop_assert_eq!(&sub.details, &fold(&history).details);
        // The offer id is the one of the greatest (time, fact key) that names one.
        let newest_offer = history
            .iter()
            .filter(|e| e.ids.offer_id.is_some())
            .max_by(|a, b| (a.time_ms, &a.fact_key).cmp(&(b.time_ms, &b.fact_key)))
            .and_then(|e| e.ids.offer_id.clone());
        prop_assert_eq!(sub.details.offer_id.map(|d| d.value), newest_offer);
        // Notices never move the state.
        let created = history.iter().any(|e| matches!(e.action, Action::AgreementCreated { .. }));
        prop_assert_eq!(sub.state == SubState::Active, created);
    }

    #[test]
    fn agreement_events_in_any_order_with_both_copies_match_the_model(
        history in arb_agreement_history(),
        seed in any::<u64>(),
    ) {
        let delivered = shuffled(history.clone(), seed);
        let sub = fold(&delivered);
        let (state, link_state) = model(&history);
        prop_assert_eq!(sub.state, state);
        prop_assert_eq!(link_state_of(&sub), link_state);
        prop_assert_eq!(&sub, &fold(&history));
    }

    #[test]
    fn a_license_keyed_link_follows_a_renewal_chain_in_any_order(
        (chain, concurrent) in arb_chain(),
        seed in any::<u64>(),
    ) {
        // The chain is keyed by the license of its first agreement.
        let mut all: Vec<Event> = chain.iter().flatten().cloned().collect();
        for e in all.iter_mut().filter(|e| e.subject.as_key() == "agmt:agmt-0") {
            e.ids.license_arn = Some("arn:aws:license-manager::1:license:l-chain".into());
            e.ids.product_code = Some("prod".into());
        }
        all.extend(concurrent.iter().cloned());
        let delivered = shuffled(all.clone(), seed);
        let subs = subs_of(&delivered);
        prop_assert_eq!(&subs, &subs_of(&all));
        let link = LinkRequest {
            license_arn: Some("l-chain".into()),
            customer_identifier: None,
            ..link()
        };
        let view = resolve_link(&link, &subs);
        // Model: the chain reaches as far as consecutive Created (RENEW) events name each
        // predecessor; its newest agreement's own events decide the state.
        let newest = chain
            .iter()
            .skip(1)
            .take_while(|events| events.iter().any(|e| matches!(e.action, Action::AgreementCreated { .. })))
            .count();
        let agmt = format!("agmt:agmt-{newest}");
        let own: Vec<Event> = all.iter().filter(|e| e.subject.as_key() == agmt).cloned().collect();
        prop_assert_eq!(view.subscription.map(|s| s.key.clone()), Some(agmt));
        prop_assert_eq!(view.state, model(&own).1);
        // A registration by account alone sees the chain and the concurrent agreement;
        // which it takes does not depend on arrival order.
        let mut with_product = all.clone();
        for e in with_product.iter_mut() {
            e.ids.product_code = Some("prod".into());
        }
        let by_account = account_link();
        let pick = |events: &[Event]| {
            let subs = subs_of(events);
            let view = resolve_link(&by_account, &subs);
            (view.subscription.map(|s| s.key.clone()), view.state)
        };
        prop_assert_eq!(pick(&shuffled(with_product.clone(), seed)), pick(&with_product));
    }

    #[test]
    fn the_types_an_organization_sees_end_in_the_model_state(
        history in arb_history(),
        dup_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        seed in any::<u64>(),
    ) {
        let mut delivered = history.clone();
        for pick in dup_picks {
            delivered.push(pick.get(&history).clone());
        }
        let delivered = shuffled(delivered, seed);
        let link = link();
        let (told, last) = told(&delivered, |sub| {
            resolve_link(&link, std::slice::from_ref(sub)).state
        });
        let (_, model_link) = model(&history);
        prop_assert_eq!(last, model_link);
        check_told(&told, model_link)?;
    }

    #[test]
    fn the_types_of_agreement_events_with_both_copies_end_in_the_model_state(
        history in arb_agreement_history(),
        seed in any::<u64>(),
    ) {
        let delivered = shuffled(history.clone(), seed);
        let (told, _) = told(&delivered, link_state_of);
        check_told(&told, model(&history).1)?;
    }

    #[test]
    fn any_order_with_duplicates_matches_the_model(
        history in arb_history(),
        dup_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        seed in any::<u64>(),
    ) {
        let mut delivered = history.clone();
        for pick in dup_picks {
            delivered.push(pick.get(&history).clone());
        }
        let delivered = shuffled(delivered, seed);
        let sub = fold(&delivered);
        let (state, link_state) = model(&history);
        prop_assert_eq!(sub.state, state);
        prop_assert_eq!(link_state_of(&sub), link_state);
        // Order independence of everything the ledger stores.
        prop_assert_eq!(&sub, &fold(&history));
    }
}
