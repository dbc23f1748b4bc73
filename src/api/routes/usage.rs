//! `POST /v1/usage`: the host reports usage of one organization; mplink meters it to AWS
//! Marketplace (see docs/metering.md). The same `mplink::metering::record_usage` as
//! `mplink usage record`, so a report means the same whichever way it arrives.

use crate::api::error::{ApiError, ApiJson};
use crate::api::state::ApiState;
use crate::metering::{record_usage, MeterConfig, MeteringError, UsageReceipt, UsageReport};
use crate::time::rfc3339_millis;
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One usage report.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    /// The host's key for this report: the same key again counts once (and answers the same).
    #[schema(example = "evt-81")]
    pub idempotency_key: String,
    /// The organization that used the product.
    #[schema(example = "org-1")]
    pub org_id: String,
    /// The pricing dimension, as listed on AWS Marketplace.
    #[schema(example = "requests")]
    pub dimension: String,
    /// How much (0 to 2,147,483,647).
    #[schema(minimum = 0, maximum = 2147483647)]
    #[serde(deserialize_with = "integral")]
    pub quantity: i64,
    /// When it was used (RFC 3339); a time in the future is refused as `in_the_future`.
    #[schema(value_type = String, format = DateTime, example = "2026-11-26T10:15:00Z")]
    pub time: DateTime<Utc>,
    /// Allocation tags, at most five (AWS's rules: keys 1-100 and values 1-256 characters of
    /// letters, digits, space to `=`, `.`, `_`, `:`, `/` and `@`): the hour's record splits the
    /// organization's usage by tag set, which the buyer sees in Cost Explorer. The same key with
    /// other tags is `idempotency_key_reused`.
    #[serde(default)]
    #[schema(value_type = HashMap<String, String>, example = json!({"project": "analytics", "env": "prod"}))]
    pub tags: crate::tags::Tags,
}

/// A JSON integer, which JSON Schema says `8720.0` is as much as `8720`: serde's `i64` refuses
/// the first, so a generated client that writes numbers as floats would be refused.
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(n) = number.as_i64() {
        return Ok(n);
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        _ => Err(serde::de::Error::custom(format!(
            "{number} is not an integer in range"
        ))),
    }
}

/// What became of a report: counted into its hour, or refused with a reason (stored either way,
/// so a retry with the same key gets the same answer).
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageAnswer {
    /// The report's key.
    pub idempotency_key: String,
    /// Counted into its hour's record.
    pub accepted: bool,
    /// Why not: `not_linked`, `subscription_cancelled`, `customer_not_subscribed`,
    /// `hour_closed`, `too_old`, `in_the_future`, `before_subscription`, `not_entitled` (a
    /// contract product's dimension the buyer's contract does not entitle); null when accepted.
    pub refusal: Option<&'static str>,
    /// The hour it counts in (RFC 3339).
    pub usage_hour: String,
    /// The key was seen before: this is the stored answer and nothing new was counted.
    pub replayed: bool,
}

impl From<UsageReceipt> for UsageAnswer {
    fn from(receipt: UsageReceipt) -> UsageAnswer {
        UsageAnswer {
            idempotency_key: receipt.idempotency_key,
            accepted: receipt.accepted,
            refusal: receipt.refusal.map(|r| r.as_str()),
            usage_hour: rfc3339_millis(receipt.usage_hour),
            replayed: receipt.replayed,
        }
    }
}

/// Reports usage of one organization.
#[utoipa::path(
    post,
    path = "/v1/usage",
    operation_id = "report_usage",
    tag = "metering",
    request_body = UsageBody,
    responses(
        (status = 200, description = "Stored: accepted into its hour's record, or refused with a reason", body = UsageAnswer),
        (status = 401, description = "Missing or wrong bearer token", body = crate::api::error::ErrorBody),
        (status = 409, description = "The idempotency key was used for a different report (idempotency_key_reused)", body = crate::api::error::ErrorBody),
        (status = 422, description = "A field is invalid (invalid_field names it) or the body does not fit", body = crate::api::error::ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn report(
    State(state): State<ApiState>,
    ApiJson(body): ApiJson<UsageBody>,
) -> Result<Json<UsageAnswer>, ApiError> {
    super::check_org_id("org_id", &body.org_id)?;
    let report = UsageReport {
        idempotency_key: body.idempotency_key,
        org_id: body.org_id,
        dimension: body.dimension,
        quantity: body.quantity,
        time: body.time,
        tags: body.tags,
    };
    let config = MeterConfig {
        contract_products: state.contract_products.clone(),
        ..MeterConfig::default()
    };
    match record_usage(&state.store, &report, &config).await {
        Ok(receipt) => Ok(Json(receipt.into())),
        Err(MeteringError::Invalid { field, problem, .. }) => Err(ApiError::field(field, problem)),
        Err(MeteringError::KeyReused { .. }) => Err(ApiError::KeyReused),
        Err(MeteringError::Store(e)) => Err(e.into()),
    }
}
