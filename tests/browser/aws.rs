//! What AWS Marketplace says about the buyer, for the two kinds of listing: what ResolveCustomer
//! returns for the registration token, then the confirmation and the cancellation, sent through
//! real LocalStack EventBridge or SNS to the test's queue.

use crate::common::localstack::Stack;
use mplink_marketplace_double::ResolvedCustomer;
use serde_json::{json, Value};
use std::time::Duration;

/// The buyer's AWS account.
pub const ACCOUNT: &str = "845735284135";
/// The seller's account (the agreements' proposer).
const SELLER: &str = "123456789012";

/// How the product is listed.
#[derive(Debug, Clone, Copy)]
pub enum Listing {
    /// A current integration: ResolveCustomer gives the account and the license ARN, the link is
    /// keyed on the license, and agreement and license events arrive through EventBridge.
    EventBridge,
    /// A legacy SNS listing: ResolveCustomer gives a customer identifier (no license), and
    /// subscribe-success / unsubscribe-pending / unsubscribe-success arrive through SNS.
    LegacySns,
}

impl Listing {
    /// A short name, for the screenshots' directory.
    pub fn name(self) -> &'static str {
        match self {
            Listing::EventBridge => "eventbridge",
            Listing::LegacySns => "legacy-sns",
        }
    }
}

/// One buyer's subscription, as AWS tells it.
pub struct Aws<'a> {
    stack: &'a Stack,
    listing: Listing,
    agreement: String,
    license: String,
    customer: String,
    /// EventBridge event times are spaced from here, so their order is the intended one.
    t0: i64,
}

impl<'a> Aws<'a> {
    /// A buyer of `stack`'s product on `listing`.
    pub fn new(stack: &'a Stack, listing: Listing) -> Aws<'a> {
        let unique = stack.suffix.replace('-', "");
        Aws {
            stack,
            listing,
            agreement: format!("agmt-{}", stack.suffix),
            license: format!("arn:aws:license-manager::{SELLER}:license:l-{unique}"),
            customer: format!("CUST{unique}"),
            t0: chrono::Utc::now().timestamp(),
        }
    }

    /// What ResolveCustomer returns for the buyer's registration token.
    pub fn resolved(&self) -> ResolvedCustomer {
        let (license_arn, customer_identifier) = match self.listing {
            Listing::EventBridge => (self.license.clone(), None),
            // The double always sends LicenseArn; empty, it counts as absent, as for AWS's
            // legacy answers that carried none.
            Listing::LegacySns => (String::new(), Some(self.customer.clone())),
        };
        ResolvedCustomer {
            customer_aws_account_id: ACCOUNT.into(),
            license_arn,
            product_code: self.stack.product.clone(),
            customer_identifier,
            agreement_id: None,
        }
    }

    /// AWS confirms the subscription.
    pub async fn confirm(&self) {
        match self.listing {
            Listing::EventBridge => {
                let created = self.agreement_detail(json!({"intent": "NEW", "status": "ACTIVE"}));
                self.put("Purchase Agreement Created - Proposer", created, 0)
                    .await;
                self.put("License Updated - Manufacturer", self.license_detail(), 1)
                    .await;
            }
            Listing::LegacySns => {
                self.stack
                    .publish("subscribe-success", &self.customer)
                    .await
            }
        }
    }

    /// The buyer cancels: the subscription is on its way out (still paid through AWS).
    pub async fn cancel(&self) {
        match self.listing {
            Listing::EventBridge => {
                let ended = self.agreement_detail(json!({"status": "CANCELLED"}));
                self.put("Purchase Agreement Ended - Proposer", ended, 60)
                    .await;
            }
            Listing::LegacySns => {
                self.stack
                    .publish("unsubscribe-pending", &self.customer)
                    .await
            }
        }
    }

    /// The cancellation is final.
    pub async fn end(&self) {
        match self.listing {
            Listing::EventBridge => {
                let detail = self.license_detail();
                self.put("License Deprovisioned - Manufacturer", detail, 120)
                    .await;
            }
            Listing::LegacySns => {
                // SNS stamps the time of publishing, and event time orders the events: make
                // this one unambiguously the later.
                tokio::time::sleep(Duration::from_millis(1100)).await;
                self.stack
                    .publish("unsubscribe-success", &self.customer)
                    .await
            }
        }
    }

    async fn put(&self, detail_type: &str, detail: Value, after_s: i64) {
        self.stack
            .put_event(detail_type, detail, self.t0 + after_s)
            .await;
    }

    fn agreement_detail(&self, agreement: Value) -> Value {
        let mut a = json!({ "id": self.agreement });
        if let (Some(a), Some(extra)) = (a.as_object_mut(), agreement.as_object()) {
            a.extend(extra.clone());
        }
        json!({
            "requestId": format!("req-{}", rand::random::<u32>()),
            "catalog": "AWSMarketplace",
            "agreement": a,
            "acceptor": { "accountId": ACCOUNT },
            "proposer": { "accountId": SELLER },
        })
    }

    fn license_detail(&self) -> Value {
        json!({
            "requestId": format!("req-{}", rand::random::<u32>()),
            "catalog": "AWSMarketplace",
            "agreement": { "id": self.agreement },
            "product": { "code": self.stack.product, "id": "prod-browser" },
            "license": { "arn": self.license },
            "acceptor": { "accountId": ACCOUNT },
            "proposer": { "accountId": SELLER },
        })
    }
}
