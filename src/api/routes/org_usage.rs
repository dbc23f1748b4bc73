//! `GET /v1/organizations/{org_id}/usage`: what an organization was metered, hour by hour —
//! the quantity, its allocations by tag, what was refused and why, and the fate of the hour's
//! record at AWS — for the host's billing page. Keyed reads ([`crate::store::Store::org_usage`]).

use crate::api::error::{ApiError, ApiQuery, ErrorBody};
use crate::api::state::ApiState;
use crate::metering::{hour_of, record_fate, HOUR_MS};
use crate::store::{OrgUsageHour, MAX_PAGE_HOURS};
use crate::time::rfc3339_millis;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};

/// Which hours.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// First hour (RFC 3339; default: the start of the current month, UTC).
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<DateTime<Utc>>,
    /// End, exclusive (RFC 3339; default: the end of the current hour). Not after `from`: no
    /// hours.
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<DateTime<Utc>>,
    /// Most hours with usage per page (1-744, default 744: a month).
    #[param(minimum = 1, maximum = 744)]
    pub limit: Option<i64>,
}

/// One allocation of an hour's quantity.
#[derive(Debug, Serialize, ToSchema)]
pub struct AllocationView {
    /// The tag set (empty: untagged usage).
    #[schema(value_type = Object)]
    pub tags: crate::tags::Tags,
    /// Its part.
    pub quantity: i64,
}

/// The hour's record at AWS.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecordView {
    /// `open`, `pending`, `sent`, `duplicate`, `not_subscribed`, `expired`, `stopped`, `failed`.
    pub fate: &'static str,
    /// The quantity the record carries (the hour's accepted usage, or zero usage).
    pub quantity: Option<i64>,
    /// AWS's `MeteringRecordId`, once sent.
    pub metering_record_id: Option<String>,
    /// When AWS answered (RFC 3339).
    pub sent_at: Option<String>,
    /// Why it is not sent yet, or why it failed: AWS's code and message.
    pub last_error: Option<String>,
}

/// One hour and dimension of usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageHourView {
    /// The hour (RFC 3339).
    pub usage_hour: String,
    /// The pricing dimension.
    pub dimension: String,
    /// Accepted usage, metered in the hour's record.
    pub quantity: i64,
    /// The accepted usage per tag set, as the record's `UsageAllocations` split it.
    pub allocations: Vec<AllocationView>,
    /// Refused usage per reason (`not_linked`, `hour_closed`, `too_old`, ...).
    #[schema(value_type = Object)]
    pub refused: BTreeMap<String, i64>,
    /// The record.
    pub record: RecordView,
}

/// A page of an organization's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrgUsageView {
    /// The organization.
    pub org_id: String,
    /// The hours asked for: from (RFC 3339).
    pub from: String,
    /// To, exclusive (RFC 3339).
    pub to: String,
    /// Hour by hour, oldest first.
    pub hours: Vec<UsageHourView>,
    /// Ask again with this `from` for the next page; null on the last.
    pub next_from: Option<String>,
}

impl UsageHourView {
    /// The view of one stored hour.
    pub fn of(h: OrgUsageHour) -> UsageHourView {
        let record = match &h.record {
            Some(r) => RecordView {
                fate: record_fate(Some(&r.status)),
                quantity: Some(r.quantity),
                metering_record_id: r.metering_record_id.clone(),
                sent_at: r.sent_at.map(rfc3339_millis),
                last_error: r.last_error.clone(),
            },
            None => RecordView {
                fate: record_fate(None),
                quantity: None,
                metering_record_id: None,
                sent_at: None,
                last_error: None,
            },
        };
        UsageHourView {
            usage_hour: rfc3339_millis(h.usage_hour),
            dimension: h.dimension,
            quantity: h.accepted,
            allocations: h
                .by_tags
                .into_iter()
                .map(|(tags, quantity)| AllocationView { tags, quantity })
                .collect(),
            refused: h.refused,
            record,
        }
    }
}

/// The hours `[from, to)` asked for, epoch ms, with the defaults the API and `mplink usage
/// show` share: from the start of the month `now` is in, to the end of its hour. `from` is taken
/// to its whole hour, so a `from` inside an hour still shows that hour.
pub fn usage_range(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> (i64, i64) {
    let month_start = || {
        Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .map_or(0, |t| t.timestamp_millis())
    };
    let from = from.map_or_else(month_start, |t| t.timestamp_millis());
    let to = to.map_or_else(
        || hour_of(now.timestamp_millis()) + HOUR_MS,
        |t| t.timestamp_millis(),
    );
    (hour_of(from), to)
}

/// An organization's metered usage.
#[utoipa::path(
    get,
    path = "/v1/organizations/{org_id}/usage",
    operation_id = "get_usage",
    tag = "metering",
    params(("org_id" = String, Path, description = "The host's organization id"), UsageQuery),
    responses(
        (status = 200, description = "Hour by hour: the quantity, its allocations, what was refused, the record's fate", body = OrgUsageView),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 422, description = "`invalid_field`: an invalid organization id or `limit`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(org_id): Path<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Json<OrgUsageView>, ApiError> {
    super::check_org_id("org_id", &org_id)?;
    let (from, to) = usage_range(query.from, query.to, Utc::now());
    let limit = query.limit.unwrap_or(MAX_PAGE_HOURS);
    if !(1..=MAX_PAGE_HOURS).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("between 1 and {MAX_PAGE_HOURS}"),
        ));
    }
    let page = state.store.org_usage(&org_id, from, to, limit).await?;
    Ok(Json(OrgUsageView {
        org_id,
        from: rfc3339_millis(from),
        to: rfc3339_millis(to),
        hours: page.hours.into_iter().map(UsageHourView::of).collect(),
        next_from: page.next_from.map(rfc3339_millis),
    }))
}
