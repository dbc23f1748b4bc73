//! `GET /v1/events?after=SEQ&wait=SECONDS`: the link-change feed of `mplink events` over HTTP,
//! read with [`Store::outbox_after`](crate::store::Store::outbox_after); each event is the
//! webhook payload ([`OutboxRow::payload_json`](crate::outbox::OutboxRow::payload_json)).

use crate::api::error::{ApiError, ApiQuery, ErrorBody};
use crate::api::state::ApiState;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use utoipa::{IntoParams, ToSchema};

/// Longest long poll, seconds.
pub const MAX_WAIT_S: u64 = 30;
/// Most events per answer.
pub const MAX_LIMIT: i64 = 500;
/// Events per answer unless asked.
pub const DEFAULT_LIMIT: i64 = 100;
/// How often a long poll looks for new rows.
const POLL: Duration = Duration::from_millis(250);

/// Where to read from and how long to wait.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events after this sequence (the `next_after` of the previous answer; 0 at first).
    #[serde(default)]
    #[param(minimum = 0)]
    pub after: i64,
    /// Seconds to wait for an event when there is none yet (0-30).
    #[serde(default)]
    #[param(minimum = 0, maximum = 30)]
    pub wait: u64,
    /// Most events returned (1-500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// A page of the feed.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsPage {
    /// Webhook payloads `{"type", "timestamp", "data"}` in sequence order.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<serde_json::Value>,
    /// The sequence to ask after next time.
    pub next_after: i64,
}

/// The link-change feed.
#[utoipa::path(
    get,
    path = "/v1/events",
    operation_id = "get_events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "Events after `after` (empty once `wait` passed without any)", body = EventsPage),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 422, description = "A value out of range", body = ErrorBody),
        (status = 429, description = "`too_many_long_polls`: `--max-long-polls` requests with `wait` are waiting already; retry later or without `wait`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Seconds"))),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventsPage>, ApiError> {
    if query.after < 0 {
        return Err(ApiError::field("after", "must be 0 or more"));
    }
    if query.wait > MAX_WAIT_S {
        return Err(ApiError::field(
            "wait",
            format!("at most {MAX_WAIT_S} seconds"),
        ));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::field(
            "limit",
            format!("between 1 and {MAX_LIMIT}"),
        ));
    }
    // Only a request that may wait holds a slot: a plain read costs no more than any other.
    let _slot = match query.wait {
        0 => None,
        _ => Some(
            state
                .guards
                .long_poll_slot()
                .ok_or(ApiError::TooManyLongPolls)?,
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(query.wait);
    loop {
        let rows = state.store.outbox_after(query.after, limit).await?;
        if !rows.is_empty() || Instant::now() >= deadline {
            let next_after = rows.last().map_or(query.after, |r| r.seq);
            let events = rows
                .iter()
                .map(|r| serde_json::from_str(&r.payload_json()).unwrap_or_default())
                .collect();
            return Ok(Json(EventsPage { events, next_after }));
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => {
                return Ok(Json(EventsPage { events: Vec::new(), next_after: query.after }));
            }
            _ = tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))) => {}
        }
    }
}
