//! The double's memory: seeded customers, armed failures, what it metered and every call.

use super::metering::DedupeKey;
use super::model::{
    Agreement, Call, DoubleConfig, Entitlement, Failure, MeteredRecord, Operation, ResolvedCustomer,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

pub(super) struct TokenEntry {
    pub customer: ResolvedCustomer,
    pub expired: bool,
}

/// A customer's subscription to a product, as metering sees it.
pub(super) struct Subscriber {
    pub customer: ResolvedCustomer,
    pub subscribed: bool,
}

/// An armed failure or delay: applies to the next `remaining` calls of its operation.
pub(super) struct Armed<T> {
    pub what: T,
    pub remaining: u32,
}

#[derive(Default)]
pub(super) struct State {
    pub config: DoubleConfig,
    pub tokens: HashMap<String, TokenEntry>,
    pub subscribers: Vec<Subscriber>,
    pub products: HashSet<String>,
    pub dedupe: HashMap<DedupeKey, usize>,
    pub metered: Vec<MeteredRecord>,
    pub entitlements: Vec<Entitlement>,
    pub agreements: Vec<Agreement>,
    pub faults: HashMap<Operation, VecDeque<Armed<Failure>>>,
    pub delays: HashMap<Operation, VecDeque<Armed<Duration>>>,
    pub unprocess_next: usize,
    pub calls: Vec<Call>,
}

fn take<T: Clone>(queue: Option<&mut VecDeque<Armed<T>>>) -> Option<T> {
    let queue = queue?;
    let front = queue.front_mut()?;
    let what = front.what.clone();
    front.remaining = front.remaining.saturating_sub(1);
    if front.remaining == 0 {
        queue.pop_front();
    }
    Some(what)
}

impl State {
    pub fn new(config: DoubleConfig) -> State {
        State {
            config,
            ..State::default()
        }
    }

    /// Seeds a token and the customer's subscription to its product.
    pub fn add_customer(&mut self, token: &str, customer: ResolvedCustomer) {
        self.products.insert(customer.product_code.clone());
        let known = self.subscribers.iter().any(|s| {
            s.customer.product_code == customer.product_code
                && s.customer.customer_aws_account_id == customer.customer_aws_account_id
                && s.customer.license_arn == customer.license_arn
        });
        if !known {
            self.subscribers.push(Subscriber {
                customer: customer.clone(),
                subscribed: true,
            });
        }
        self.tokens.insert(
            token.to_string(),
            TokenEntry {
                customer,
                expired: false,
            },
        );
    }

    /// Marks `token` expired; false when it was never seeded.
    pub fn expire_token(&mut self, token: &str) -> bool {
        match self.tokens.get_mut(token) {
            Some(entry) => {
                entry.expired = true;
                true
            }
            None => false,
        }
    }

    /// Sets whether the customers named by `id` (account id, license ARN or legacy customer
    /// identifier) are subscribed; returns how many subscriptions it changed.
    pub fn set_subscribed(&mut self, id: &str, subscribed: bool) -> usize {
        let mut changed = 0;
        for s in &mut self.subscribers {
            let c = &s.customer;
            if c.customer_aws_account_id == id
                || c.license_arn == id
                || c.customer_identifier.as_deref() == Some(id)
            {
                s.subscribed = subscribed;
                changed += 1;
            }
        }
        changed
    }

    pub fn knows_product(&self, product: &str) -> bool {
        self.products.contains(product)
    }

    pub fn fail_next(&mut self, op: Operation, failure: Failure, times: u32) {
        if times > 0 {
            self.faults.entry(op).or_default().push_back(Armed {
                what: failure,
                remaining: times,
            });
        }
    }

    pub fn delay_next(&mut self, op: Operation, delay: Duration, times: u32) {
        if times > 0 {
            self.delays.entry(op).or_default().push_back(Armed {
                what: delay,
                remaining: times,
            });
        }
    }

    /// The failure armed for this call of `op`, if any (counts the call).
    pub fn take_failure(&mut self, op: Operation) -> Option<Failure> {
        take(self.faults.get_mut(&op))
    }

    /// The delay armed for this call of `op`, if any (counts the call).
    pub fn take_delay(&mut self, op: Operation) -> Option<Duration> {
        take(self.delays.get_mut(&op))
    }

    pub fn record(&mut self, mut call: Call) {
        call.seq = self.calls.len() as u64 + 1;
        self.calls.push(call);
    }
}
