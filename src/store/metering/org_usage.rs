//! One organization's metered usage by hour and dimension, with the fate of each hour's record:
//! what the billing page shows (`GET /v1/organizations/{org_id}/usage`, `mplink usage show`).
//! Keyed reads only: the organization's usage rows by `(org_id, usage_hour)`, then each
//! record by its primary key.

use super::{record_from, MeterRecord, RECORD_COLUMNS, USAGE_ACCEPTED, USAGE_REFUSED};
use crate::store::{q, Store, StoreError};
use sqlx::Row;
use std::collections::BTreeMap;

/// Most hours one page holds (a month of 31 days).
pub const MAX_PAGE_HOURS: i64 = 744;

/// The usage of one hour and dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgUsageHour {
    /// The hour (epoch ms).
    pub usage_hour: i64,
    /// The dimension.
    pub dimension: String,
    /// Accepted usage, counted into the record.
    pub accepted: i64,
    /// Accepted usage per tag set (empty tags: untagged), in tag order.
    pub by_tags: Vec<(crate::tags::Tags, i64)>,
    /// Refused usage per reason.
    pub refused: BTreeMap<String, i64>,
    /// Reports not decided yet (written with SQL).
    pub submitted: i64,
    /// The hour's record for the subscription the usage counted against, once the hour closed.
    pub record: Option<MeterRecord>,
}

/// A page of an organization's usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgUsagePage {
    /// Hour by hour, oldest first, dimensions in order.
    pub hours: Vec<OrgUsageHour>,
    /// Where the next page starts (epoch ms), when this one was cut at the page size.
    pub next_from: Option<i64>,
}

impl Store {
    /// `org_id`'s usage in hours `[from_ms, to_ms)`, at most `page_hours` hours with usage.
    pub async fn org_usage(
        &self,
        org_id: &str,
        from_ms: i64,
        to_ms: i64,
        page_hours: i64,
    ) -> Result<OrgUsagePage, StoreError> {
        let page_hours = page_hours.clamp(1, MAX_PAGE_HOURS);
        let hours: Vec<i64> = sqlx::query_scalar(
            "SELECT DISTINCT usage_hour FROM mplink_usage WHERE org_id = $1 AND usage_hour >= $2 \
             AND usage_hour < $3 ORDER BY usage_hour LIMIT $4",
        )
        .bind(org_id)
        .bind(from_ms)
        .bind(to_ms)
        .bind(page_hours + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading an organization's usage hours"))?;
        let next_from = hours.get(page_hours as usize).copied();
        let end = next_from.unwrap_or(to_ms);
        let rows = sqlx::query(
            "SELECT usage_hour, dimension, sub_key, status, reason, tags, \
             CAST(SUM(quantity) AS BIGINT) AS quantity FROM mplink_usage \
             WHERE org_id = $1 AND usage_hour >= $2 AND usage_hour < $3 \
             GROUP BY usage_hour, dimension, sub_key, status, reason, tags",
        )
        .bind(org_id)
        .bind(from_ms)
        .bind(end)
        .fetch_all(&self.pool)
        .await
        .map_err(q("reading an organization's usage"))?;
        let g = |e| StoreError::Query {
            op: "reading an organization's usage",
            source: e,
        };
        let mut by_hour: BTreeMap<(i64, String), OrgUsageHour> = BTreeMap::new();
        let mut subs: BTreeMap<(i64, String), String> = BTreeMap::new();
        for row in &rows {
            let hour: i64 = row.try_get("usage_hour").map_err(g)?;
            let dimension: String = row.try_get("dimension").map_err(g)?;
            let status: String = row.try_get("status").map_err(g)?;
            let quantity: i64 = row.try_get("quantity").map_err(g)?;
            let entry = by_hour
                .entry((hour, dimension.clone()))
                .or_insert_with(|| OrgUsageHour {
                    usage_hour: hour,
                    dimension: dimension.clone(),
                    accepted: 0,
                    by_tags: Vec::new(),
                    refused: BTreeMap::new(),
                    submitted: 0,
                    record: None,
                });
            match status.as_str() {
                USAGE_ACCEPTED => {
                    entry.accepted += quantity;
                    let tags: String = row.try_get("tags").map_err(g)?;
                    entry.by_tags.push((crate::tags::parse(&tags), quantity));
                    if let Some(sub) = row.try_get::<Option<String>, _>("sub_key").map_err(g)? {
                        subs.insert((hour, dimension), sub);
                    }
                }
                USAGE_REFUSED => {
                    let reason: Option<String> = row.try_get("reason").map_err(g)?;
                    *entry.refused.entry(reason.unwrap_or_default()).or_default() += quantity;
                }
                _ => entry.submitted += quantity,
            }
        }
        for ((hour, dimension), sub) in subs {
            let found = sqlx::query(&format!(
                "SELECT {RECORD_COLUMNS} FROM mplink_meter_records \
                 WHERE sub_key = $1 AND dimension = $2 AND usage_hour = $3"
            ))
            .bind(&sub)
            .bind(&dimension)
            .bind(hour)
            .fetch_optional(&self.pool)
            .await
            .map_err(q("reading a meter record"))?;
            if let (Some(row), Some(entry)) = (found, by_hour.get_mut(&(hour, dimension))) {
                entry.record = Some(record_from(&row)?);
            }
        }
        let mut hours: Vec<OrgUsageHour> = by_hour.into_values().collect();
        for h in &mut hours {
            // One entry per tag set, even when the usage counted against two subscriptions.
            let mut merged: BTreeMap<crate::tags::Tags, i64> = BTreeMap::new();
            for (tags, quantity) in h.by_tags.drain(..) {
                *merged.entry(tags).or_default() += quantity;
            }
            h.by_tags = merged.into_iter().collect();
        }
        Ok(OrgUsagePage { hours, next_from })
    }
}
