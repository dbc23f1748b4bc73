//! The example host's own data: one signed-in user's organizations, the billing facts the host
//! knows about each, and their resources (the SaaS's data, which outlives any billing link).

use super::ExampleError;
use serde::Serialize;

/// One of the signed-in user's organizations, with the billing facts the host knows about it.
#[derive(Debug, Clone, Copy)]
pub struct HostOrganization {
    /// The host's id for it (what mplink links).
    pub org_id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// How it pays today, as the host's billing page would say.
    pub billing_today: &'static str,
    /// A card (or other method) is on file with the SaaS.
    pub payment_method_on_file: bool,
    /// The other marketplace it pays through, if any.
    pub other_marketplace: Option<&'static str>,
    /// Under a contract that an AWS subscription cannot replace.
    pub under_contract: bool,
    /// Whether the signed-in user's role may change its billing.
    pub can_change_billing: bool,
    /// Its resources: the SaaS's own data, which outlives any billing link.
    pub resources: &'static [Resource],
}

/// One of an organization's resources.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Resource {
    /// What it is ("cluster").
    pub kind: &'static str,
    /// Its name.
    pub name: &'static str,
    /// Its status.
    pub status: &'static str,
}

/// The example's signed-in user, as the host's session would name them: sent as `user_id`, it
/// claims the registrations this user opens.
pub const SIGNED_IN_USER: &str = "user-demo";

/// The signed-in user's organizations in the example.
pub const ORGANIZATIONS: &[HostOrganization] = &[
    HostOrganization {
        org_id: "org-acme",
        name: "Acme Corp",
        billing_today: "No payment method",
        payment_method_on_file: false,
        other_marketplace: None,
        under_contract: false,
        can_change_billing: true,
        resources: &[
            Resource {
                kind: "cluster",
                name: "prod-eu",
                status: "running",
            },
            Resource {
                kind: "cluster",
                name: "staging",
                status: "running",
            },
        ],
    },
    HostOrganization {
        org_id: "org-globex",
        name: "Globex",
        billing_today: "Google Cloud Marketplace",
        payment_method_on_file: false,
        other_marketplace: Some("gcp"),
        under_contract: false,
        can_change_billing: true,
        resources: &[Resource {
            kind: "cluster",
            name: "analytics",
            status: "running",
        }],
    },
    HostOrganization {
        org_id: "org-initech",
        name: "Initech",
        billing_today: "Credit card",
        payment_method_on_file: true,
        other_marketplace: None,
        under_contract: false,
        can_change_billing: false,
        resources: &[],
    },
];

/// The user's organization `org_id`, or the refusal to act for any other.
pub(super) fn host_organization(org_id: &str) -> Result<&'static HostOrganization, ExampleError> {
    ORGANIZATIONS
        .iter()
        .find(|o| o.org_id == org_id)
        .ok_or_else(|| ExampleError::UnknownOrganization(org_id.to_string()))
}
