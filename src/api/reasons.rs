//! Why an organization cannot be linked: the one home of the reason codes and of the texts the
//! host shows as the disabled Link button's tooltip (docs/http-api.md lists them).

use serde::Serialize;
use utoipa::ToSchema;

/// Why the Link button of an organization is disabled. When several apply, the first in this
/// order is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The registration expired: the buyer must start again from AWS Marketplace.
    RegistrationExpired,
    /// The registration's product is not this organization's (or not one this SaaS sells).
    ProductMismatch,
    /// The organization is already linked to an AWS Marketplace subscription.
    AlreadyLinked,
    /// The organization pays through another marketplace.
    OtherMarketplace,
    /// The organization is under a contract that an AWS Marketplace subscription cannot replace.
    UnderContract,
    /// The signed-in user may not change this organization's billing.
    NotPermitted,
    /// This registration's subscription is already linked to another organization.
    RegistrationLinked,
}

impl Reason {
    /// Every reason, in precedence order.
    pub const ALL: [Reason; 7] = [
        Reason::RegistrationExpired,
        Reason::ProductMismatch,
        Reason::AlreadyLinked,
        Reason::OtherMarketplace,
        Reason::UnderContract,
        Reason::NotPermitted,
        Reason::RegistrationLinked,
    ];

    /// The stable code (also the JSON `code` of a refused link).
    pub fn code(self) -> &'static str {
        match self {
            Reason::RegistrationExpired => "registration_expired",
            Reason::ProductMismatch => "product_mismatch",
            Reason::AlreadyLinked => "already_linked",
            Reason::OtherMarketplace => "other_marketplace",
            Reason::UnderContract => "under_contract",
            Reason::NotPermitted => "not_permitted",
            Reason::RegistrationLinked => "registration_linked",
        }
    }

    /// What the disabled Link button's tooltip says.
    pub fn text(self) -> &'static str {
        match self {
            Reason::RegistrationExpired => {
                "This registration has expired. Return to Manage Subscriptions in AWS Marketplace and click Set Up Your Account again."
            }
            Reason::ProductMismatch => {
                "This organization uses a different product than the AWS Marketplace subscription."
            }
            Reason::AlreadyLinked => {
                "This organization is already linked to an AWS Marketplace subscription."
            }
            Reason::OtherMarketplace => "This organization pays through another marketplace.",
            Reason::UnderContract => {
                "This organization is under a contract that an AWS Marketplace subscription cannot replace."
            }
            Reason::NotPermitted => "You are not allowed to change this organization's billing.",
            Reason::RegistrationLinked => {
                "This AWS Marketplace subscription is already linked to another organization."
            }
        }
    }
}

/// What decides whether one organization can be linked: the host's facts and mplink's own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The registration expired (and this organization is not the one linked through it).
    pub registration_expired: bool,
    /// The registration's product is not the organization's, or not one this SaaS sells.
    pub product_mismatch: bool,
    /// mplink: the organization's link to another subscription still bills it.
    pub org_linked_elsewhere: bool,
    /// Host: paying through another marketplace.
    pub other_marketplace: bool,
    /// Host: under a contract.
    pub under_contract: bool,
    /// Host: the signed-in user may change billing.
    pub can_change_billing: bool,
    /// mplink: another organization holds the registration's subscription (or was linked
    /// through this registration).
    pub subscription_linked_elsewhere: bool,
}

impl Facts {
    /// The first reason that applies, or None: the organization can be linked.
    pub fn reason(&self) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| match r {
            Reason::RegistrationExpired => self.registration_expired,
            Reason::ProductMismatch => self.product_mismatch,
            Reason::AlreadyLinked => self.org_linked_elsewhere,
            Reason::OtherMarketplace => self.other_marketplace,
            Reason::UnderContract => self.under_contract,
            Reason::NotPermitted => !self.can_change_billing,
            Reason::RegistrationLinked => self.subscription_linked_elsewhere,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_serialised_names_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::json!(r.code())
            );
            assert!(seen.insert(r.code()));
            assert!(!r.text().is_empty());
        }
    }

    #[test]
    fn the_first_applicable_reason_wins() {
        let ok = Facts {
            can_change_billing: true,
            ..Facts::default()
        };
        assert_eq!(ok.reason(), None);
        assert_eq!(Facts::default().reason(), Some(Reason::NotPermitted));
        let all = Facts {
            registration_expired: true,
            product_mismatch: true,
            org_linked_elsewhere: true,
            other_marketplace: true,
            under_contract: true,
            can_change_billing: false,
            subscription_linked_elsewhere: true,
        };
        assert_eq!(all.reason(), Some(Reason::RegistrationExpired));
        let later = Facts {
            registration_expired: false,
            product_mismatch: false,
            ..all.clone()
        };
        assert_eq!(later.reason(), Some(Reason::AlreadyLinked));
        let last = Facts {
            subscription_linked_elsewhere: true,
            ..ok
        };
        assert_eq!(last.reason(), Some(Reason::RegistrationLinked));
    }
}
