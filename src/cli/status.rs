//! `mplink link` and `mplink status`: a link made by hand, and the ledger as a table or JSON.

use super::output::{render_table, Table};
use super::{CliError, LinkArgs, StatusArgs};
use crate::event::normalize_identifier;
use crate::ledger::LinkRequest;
use crate::store::{StatusFilter, Store};
use crate::time::now_ms;
use std::io::Write;
use std::process::ExitCode;

pub(super) async fn link(store: &Store, args: LinkArgs) -> Result<ExitCode, CliError> {
    // Registrations are normalised exactly as the decoder normalises what AWS sends.
    let id = |raw: Option<String>| {
        raw.as_deref()
            .and_then(normalize_identifier)
            .map(str::to_owned)
    };
    let request = LinkRequest {
        org_id: args.org,
        product_code: id(Some(args.product_code)).ok_or(CliError::EmptyProductCode)?,
        customer_identifier: id(args.customer_identifier),
        customer_aws_account_id: id(args.customer_account_id),
        license_arn: id(args.license_arn),
        requested_at_ms: now_ms(),
    };
    let outcome = store.link(&request).await?;
    if let Some(previous) = outcome.moved_from {
        println!("link moved from organization {previous}");
    }
    print!("{}", render_table(std::slice::from_ref(&outcome.row)));
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn status(store: &Store, args: StatusArgs) -> Result<ExitCode, CliError> {
    let filter = StatusFilter {
        org_id: args.org,
        customer_identifier: args.customer_identifier,
    };
    // Page by page, so memory stays flat however large the ledger.
    let mut pages = store.status_pages(&filter);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut table: Option<Table> = None;
    while let Some(page) = pages.next_page().await? {
        if args.json {
            for row in &page {
                serde_json::to_writer(&mut out, row).map_err(|e| CliError::Write(e.into()))?;
                writeln!(out).map_err(CliError::Write)?;
            }
            continue;
        }
        let table = match &mut table {
            Some(table) => table,
            None => {
                let sized = Table::sized_for(&page);
                out.write_all(sized.header().as_bytes())
                    .map_err(CliError::Write)?;
                table.insert(sized)
            }
        };
        for row in &page {
            out.write_all(table.line(row).as_bytes())
                .map_err(CliError::Write)?;
        }
    }
    if !args.json && table.is_none() {
        write!(out, "{}", render_table(&[])).map_err(CliError::Write)?;
    }
    out.flush().map_err(CliError::Write)?;
    Ok(ExitCode::SUCCESS)
}
