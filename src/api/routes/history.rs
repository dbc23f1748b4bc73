//! `GET /v1/organizations/{org_id}/history`: the organization's timeline, oldest first — each
//! event with its source, own time, arrival and decision, each link change with its webhook
//! delivery, each metering record with AWS's answer ([`crate::store::Store::org_history`]).
//! `mplink history --org` prints the same entries.

use crate::api::error::{ApiError, ApiQuery, ErrorBody};
use crate::api::state::ApiState;
use crate::metering::record_fate;
use crate::store::HistoryEntry;
use crate::time::rfc3339_millis;
use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

/// Most entries per page.
pub const MAX_LIMIT: usize = 1_000;

/// Which part of the timeline.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Entries already read (the `next_after` of the previous page; 0 at first).
    #[serde(default)]
    #[param(minimum = 0)]
    pub after: usize,
    /// Most entries returned (1-1000, default 500).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A page of the timeline.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryPage {
    /// The organization.
    pub org_id: String,
    /// Oldest first. Each has `kind` (`event`, `link_change`, `meter_record`), `time` (the
    /// event's own time, or the record's hour) and `recorded_at`, and what its kind carries:
    /// an event its `source`, `action`, `outcome` and `reason`; a link change its
    /// `event_type`, `state_before`, `state_after`, `cause` and webhook `delivery`; a record its
    /// `dimension`, `quantity`, `fate` and `metering_record_id`.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<Value>,
    /// Ask again with `after` set to this for the next page; null on the last.
    pub next_after: Option<usize>,
}

/// One entry as the API and `mplink history --json` show it.
pub fn entry_json(entry: &HistoryEntry) -> Value {
    let time = |ms: i64| rfc3339_millis(ms);
    match entry {
        HistoryEntry::Event {
            time_ms,
            recorded_ms,
            message_id,
            source,
            action,
            sub_key,
            outcome,
            reason,
        } => json!({
            "kind": "event", "time": time(*time_ms), "recorded_at": time(*recorded_ms),
            "message_id": message_id, "source": source, "action": action, "sub_key": sub_key,
            "outcome": outcome, "reason": reason,
        }),
        HistoryEntry::LinkChange {
            time_ms,
            recorded_ms,
            seq,
            event_type,
            sub_key,
            state_before,
            state_after,
            cause,
            delivery,
            attempts,
            delivered_ms,
            last_error,
        } => json!({
            "kind": "link_change", "time": time(*time_ms), "recorded_at": time(*recorded_ms),
            "seq": seq, "event_type": event_type, "sub_key": sub_key,
            "state_before": state_before, "state_after": state_after, "cause": cause,
            "delivery": {"status": delivery, "attempts": attempts,
                         "delivered_at": delivered_ms.map(time), "last_error": last_error},
        }),
        HistoryEntry::MeterRecord(r) => json!({
            "kind": "meter_record", "time": time(r.usage_hour), "recorded_at": time(r.created_at),
            "sub_key": r.sub_key, "dimension": r.dimension, "quantity": r.quantity,
            "final": r.final_usage, "fate": record_fate(Some(&r.status)),
            "metering_record_id": r.metering_record_id, "sent_at": r.sent_at.map(time),
            "last_error": r.last_error,
        }),
    }
}

/// An organization's history.
#[utoipa::path(
    get,
    path = "/v1/organizations/{org_id}/history",
    operation_id = "get_history",
    tag = "billing",
    params(("org_id" = String, Path, description = "The host's organization id"), HistoryQuery),
    responses(
        (status = 200, description = "The timeline, oldest first", body = HistoryPage),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 422, description = "`invalid_field`: an invalid organization id or `limit`", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<ApiState>,
    Path(org_id): Path<String>,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    super::check_org_id("org_id", &org_id)?;
    let limit = query.limit.unwrap_or(500);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("between 1 and {MAX_LIMIT}"),
        ));
    }
    let all = state.store.org_history(&org_id).await?;
    let page: Vec<Value> = all
        .iter()
        .skip(query.after)
        .take(limit)
        .map(entry_json)
        .collect();
    let read = query.after.saturating_add(page.len());
    Ok(Json(HistoryPage {
        org_id,
        next_after: (read < all.len()).then_some(read),
        entries: page,
    }))
}
