//! A large ledger written straight in SQL (a recursive series, so the same statements run on
//! SQLite and PostgreSQL): the plan test and the lookup benchmark need a million rows in
//! seconds, not through `apply`.
//!
//! Shape: subscription `i` (1..=n) is an agreement `a-i` with license `l-i` and account
//! `acct-i` when `i % 5 == 0`, and every other such agreement (`i % 10 == 5`) renews `a-(i-5)`;
//! the others are legacy customers `c-i`. Link `org-i` (1..=links) names, by `i % 3`, customer
//! `c-(5i+1)`, license `l-5i` or account `acct-5i`, so every link finds its subscription while
//! `5 * links <= n`.

use sqlx::AnyPool;

/// The product every row belongs to.
pub const BULK_PRODUCT: &str = "prod-bulkexample";

/// Inserts `subscriptions` subscriptions and `links` links, then ANALYZEs both tables.
pub async fn bulk_ledger(pool: &AnyPool, subscriptions: i64, links: i64) {
    let p = BULK_PRODUCT;
    let series = |n: i64| {
        format!("WITH RECURSIVE series(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM series WHERE i < {n})")
    };
    let subs = format!(
        "INSERT INTO mplink_subscriptions (sub_key, product_code, customer_identifier, \
         customer_aws_account_id, agreement_id, license_arn, license_id, previous_agreement_id, \
         state, state_time, state_rank, state_fact, last_event_time, version, updated_at) \
         {} SELECT CASE WHEN i % 5 = 0 THEN 'agmt:a-' || i ELSE 'cust:{p}:c-' || i END, \
         '{p}', \
         CASE WHEN i % 5 = 0 THEN NULL ELSE 'c-' || i END, \
         CASE WHEN i % 5 = 0 THEN 'acct-' || i ELSE NULL END, \
         CASE WHEN i % 5 = 0 THEN 'a-' || i ELSE NULL END, \
         CASE WHEN i % 5 = 0 THEN 'arn:aws:license-manager::1:license:l-' || i ELSE NULL END, \
         CASE WHEN i % 5 = 0 THEN 'l-' || i ELSE NULL END, \
         CASE WHEN i % 10 = 5 THEN 'a-' || (i - 5) ELSE NULL END, \
         'active', i, 1, 'f-' || i, i, 1, 0 FROM series",
        series(subscriptions)
    );
    let links = format!(
        "INSERT INTO mplink_org_links (org_id, link_key, product_code, customer_identifier, \
         customer_aws_account_id, license_arn, requested_at) \
         {} SELECT 'org-' || i, \
         CASE i % 3 WHEN 0 THEN 'cust:{p}:c-' || (5 * i + 1) \
                    WHEN 1 THEN 'lic:l-' || (5 * i) \
                    ELSE 'acct:{p}:acct-' || (5 * i) END, \
         '{p}', \
         CASE WHEN i % 3 = 0 THEN 'c-' || (5 * i + 1) ELSE NULL END, \
         CASE WHEN i % 3 = 2 THEN 'acct-' || (5 * i) ELSE NULL END, \
         CASE WHEN i % 3 = 1 THEN 'arn:aws:license-manager::1:license:l-' || (5 * i) ELSE NULL END, \
         0 FROM series",
        series(links)
    );
    for sql in [
        subs.as_str(),
        links.as_str(),
        "ANALYZE mplink_subscriptions",
        "ANALYZE mplink_org_links",
    ] {
        sqlx::query(sql)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}
