//! What commands print: the status table (aligned columns sized on the first page) and single
//! lines flushed as they are written (a `--follow` reader sees each at once).

use super::CliError;
use crate::store::StatusRow;
use std::io::Write;

/// Writes one line to stdout and flushes it.
pub(crate) fn print_line(text: &str) -> Result<(), CliError> {
    let stdout = std::io::stdout();
    let mut lock = stdout.lock();
    writeln!(lock, "{text}")
        .and_then(|_| lock.flush())
        .map_err(CliError::Write)
}

/// Renders status rows as an aligned text table.
pub fn render_table(rows: &[StatusRow]) -> String {
    let table = Table::sized_for(rows);
    let mut out = table.header();
    for row in rows {
        out.push_str(&table.line(row));
    }
    if rows.is_empty() {
        out.push_str("(no subscriptions)\n");
    }
    out
}

const TABLE_HEADER: [&str; 10] = [
    "ORG",
    "PRODUCT",
    "CUSTOMER",
    "ACCOUNT",
    "AGREEMENT",
    "SUBSCRIPTION",
    "LINK",
    "PAYMENT METHOD",
    "LAST EVENT",
    "NOTES",
];

/// Column widths of the status table, measured on the first page only (a bounded look-ahead):
/// a longer value further down widens its own line, never the lines already printed.
pub(super) struct Table {
    widths: [usize; 10],
}

impl Table {
    pub(super) fn sized_for(rows: &[StatusRow]) -> Table {
        let mut widths = TABLE_HEADER.map(str::len);
        for row in rows {
            for (w, c) in widths.iter_mut().zip(table_cells(row)) {
                *w = (*w).max(c.chars().count());
            }
        }
        Table { widths }
    }

    pub(super) fn header(&self) -> String {
        self.render(&TABLE_HEADER)
    }

    pub(super) fn line(&self, row: &StatusRow) -> String {
        let cells = table_cells(row);
        self.render(&cells.each_ref().map(String::as_str))
    }

    fn render(&self, cells: &[&str; 10]) -> String {
        let line: Vec<String> = cells
            .iter()
            .zip(self.widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let mut out = line.join("  ").trim_end().to_string();
        out.push('\n');
        out
    }
}

fn table_cells(r: &StatusRow) -> [String; 10] {
    let dash = || "-".to_string();
    [
        r.org_id.clone().unwrap_or_else(dash),
        r.product_code.clone().unwrap_or_else(dash),
        r.customer_identifier.clone().unwrap_or_else(dash),
        r.customer_aws_account_id.clone().unwrap_or_else(dash),
        r.agreement_id.clone().unwrap_or_else(dash),
        r.subscription_state.to_string(),
        r.link_state.map_or_else(dash, |s| s.to_string()),
        match (r.link_state, r.payment_method) {
            (None, _) => dash(),
            (Some(_), Some(method)) => method.display_text().to_string(),
            (Some(_), None) => "(none)".to_string(),
        },
        r.last_event_time.clone().unwrap_or_else(dash),
        Some(r.notes().join("; "))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(dash),
    ]
}
