//! `mplink registration release ID`: the operator's way out when the wrong user of the host
//! claimed a buyer's registration (every later user gets 403 `registration_claimed`).

use super::CliError;
use crate::store::Store;
use std::process::ExitCode;

/// Arguments of `mplink registration`.
#[derive(Debug, clap::Args)]
pub struct RegistrationArgs {
    /// What to do with a registration.
    #[command(subcommand)]
    pub command: RegistrationCommand,
}

/// The registration tools.
#[derive(Debug, clap::Subcommand)]
pub enum RegistrationCommand {
    /// Clear a registration's claim, so the next user of the host to ask about it claims it.
    Release {
        /// The registration id (`reg_…`).
        id: String,
    },
}

pub(super) async fn run(store: &Store, args: RegistrationArgs) -> Result<ExitCode, CliError> {
    let RegistrationCommand::Release { id } = args.command;
    if !crate::api::routes::check_registration_id(&id) {
        return Err(CliError::Refused(format!(
            "{id:?} is not a registration id (reg_ and 32 lowercase hex digits)"
        )));
    }
    match store.release_registration(&id).await? {
        None => Err(CliError::Refused(format!("no registration {id}"))),
        Some(None) => {
            println!("{id} was not claimed; nothing changed");
            Ok(ExitCode::SUCCESS)
        }
        Some(Some(user)) => {
            println!("{id} released (it was claimed by {user:?})");
            Ok(ExitCode::SUCCESS)
        }
    }
}
