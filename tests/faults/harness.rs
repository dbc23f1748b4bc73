//! What every fault scenario shares: sizes, message histories with their model, the end
//! checks, and the summary table.

use crate::common::*;
use mplink::store::Store;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Duration;

/// `base` scaled by `MPLINK_FAULT_SCALE` (default 1).
pub fn scaled(base: usize) -> usize {
    let scale: f64 = std::env::var("MPLINK_FAULT_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    ((base as f64) * scale).round().max(1.0) as usize
}

/// A random legacy history: `n` distinct events over `customers` subscriptions, with ties.
pub struct History {
    /// (customer, event time, action, SNS message id).
    pub events: Vec<(String, i64, &'static str, String)>,
    /// Product code.
    pub product: String,
}

impl History {
    /// `n` events for `customers` customers of `product`, seeded.
    pub fn random(seed: u64, product: &str, customers: usize, n: usize) -> History {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let actions = [
            "subscribe-success",
            "subscribe-fail",
            "unsubscribe-pending",
            "unsubscribe-success",
            "entitlement-updated",
        ];
        let events = (0..n)
            .map(|i| {
                let customer = format!("cust-{}", rng.gen_range(0..customers));
                let t = T0 + rng.gen_range(0..(n as i64 / 2).max(10)) * 1_000;
                (
                    customer,
                    t,
                    *actions.choose(&mut rng).expect("action"),
                    format!("{product}-{seed}-{i}"),
                )
            })
            .collect();
        History {
            events,
            product: product.to_string(),
        }
    }

    /// Links an organization to every customer's subscription, before any event, so each
    /// change the events make is notified (and a change notified twice is counted).
    pub async fn link_every_customer(&self, store: &Store) {
        let customers: std::collections::BTreeSet<&str> =
            self.events.iter().map(|(c, ..)| c.as_str()).collect();
        for customer in customers {
            store
                .link(&mplink::ledger::LinkRequest {
                    org_id: format!("org-{customer}"),
                    product_code: self.product.clone(),
                    customer_identifier: Some(customer.to_string()),
                    customer_aws_account_id: None,
                    license_arn: None,
                    requested_at_ms: T0,
                })
                .await
                .expect("link");
        }
    }

    /// The SQS bodies (SNS envelopes), with `duplicates` extra copies, shuffled.
    pub fn bodies(&self, seed: u64, duplicates: usize) -> Vec<String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x9e37_79b9);
        let mut bodies: Vec<String> = self
            .events
            .iter()
            .map(|(c, t, a, id)| sns_body(id, a, &self.product, c, *t))
            .collect();
        for _ in 0..duplicates {
            let copy = bodies[rng.gen_range(0..self.events.len())].clone();
            bodies.push(copy);
        }
        bodies.shuffle(&mut rng);
        bodies
    }

    /// The model: each customer's state after sorting its events by (time, rank, fact).
    pub fn model(&self) -> HashMap<String, &'static str> {
        let mut per: HashMap<String, Vec<(i64, &str, String)>> = HashMap::new();
        for (c, t, a, id) in &self.events {
            per.entry(c.clone())
                .or_default()
                .push((*t, a, format!("sns:{id}")));
        }
        per.into_iter()
            .map(|(c, evs)| (c, model_state(&evs)))
            .collect()
    }
}

/// What a scenario found at the end.
#[derive(Debug, Default)]
pub struct Tally {
    /// Messages sent (copies included).
    pub sent: usize,
    /// Event log rows applied or stale (first decisions on distinct events).
    pub applied: usize,
    /// Copies recognised as duplicates (sent − distinct − rejected deliveries).
    pub duplicates: usize,
    /// Rejected messages.
    pub rejected: usize,
    /// Distinct events without an event log row.
    pub lost: usize,
    /// Facts whose effect was applied more than once (rows in `mplink_transitions`).
    pub double_applied: usize,
    /// Outbox rows caused by the events (every customer's organization is linked first).
    pub notified: usize,
    /// (delivery, organization, change) groups notified more than once.
    pub notified_twice: usize,
    /// Subscriptions whose state differs from the model.
    pub wrong_state: usize,
    /// Time from the fault's end to full recovery, if the scenario measures one.
    pub recovery: Option<Duration>,
}

/// Compares the store with the history's model and the event log with the sent ids.
pub async fn check(
    store: &Store,
    history: &History,
    sent: usize,
    rejected_expected: usize,
) -> Tally {
    let log = store.event_log().await.expect("event log");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for e in &log {
        *counts.entry(e.message_id.as_str()).or_default() += 1;
    }
    let lost = history
        .events
        .iter()
        .filter(|(_, _, _, id)| !counts.contains_key(id.as_str()))
        .count();
    let double_applied = store.double_applied_facts().await.expect("transitions") as usize;
    let (notified, notified_twice) = store.notifications_by_event().await.expect("outbox");
    let applied = log
        .iter()
        .filter(|e| e.outcome == "applied" || e.outcome == "stale")
        .count();
    let rejected = log.iter().filter(|e| e.outcome == "rejected").count();
    let model = history.model();
    let subs = store.subscriptions().await.expect("subscriptions");
    let mut wrong_state = 0;
    for (customer, expected) in &model {
        let actual = subs
            .iter()
            .find(|s| {
                s.customer_identifier.as_deref() == Some(customer)
                    && s.product_code.as_deref() == Some(&history.product)
            })
            .map_or("missing", |s| s.state.as_str());
        if actual != *expected {
            wrong_state += 1;
            eprintln!("{customer}: expected {expected}, found {actual}");
        }
    }
    Tally {
        sent,
        applied,
        duplicates: sent.saturating_sub(history.events.len() + rejected_expected),
        rejected,
        lost,
        double_applied,
        notified: notified as usize,
        notified_twice: notified_twice as usize,
        wrong_state,
        recovery: None,
    }
}

/// Prints the scenario's summary table and asserts nothing was lost or applied twice.
pub fn report(scenario: &str, tally: &Tally) {
    println!();
    println!(
        "| scenario | sent | applied | duplicates | rejected | lost | double-applied | notified | notified twice | recovery |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {scenario} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
        tally.sent,
        tally.applied,
        tally.duplicates,
        tally.rejected,
        tally.lost,
        tally.double_applied,
        tally.notified,
        tally.notified_twice,
        tally
            .recovery
            .map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()))
    );
    assert_eq!(tally.lost, 0, "{scenario}: events lost");
    assert_eq!(tally.double_applied, 0, "{scenario}: facts applied twice");
    // Without notifications the column below would pass for want of anything to count.
    assert!(
        tally.notified > 0,
        "{scenario}: no organization was notified"
    );
    assert_eq!(
        tally.notified_twice, 0,
        "{scenario}: an organization notified twice of one delivery's change"
    );
    assert_eq!(
        tally.wrong_state, 0,
        "{scenario}: final state differs from the model"
    );
}
