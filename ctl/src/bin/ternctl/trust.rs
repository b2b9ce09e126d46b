//! `ternctl trust add|remove|list`: who may open streams to this node's private ports.

use clap::Subcommand;

use crate::output::{Failure, Report};
use crate::{check_target, failure};
use tern_ctl::Client;

#[derive(Subcommand)]
pub enum TrustCommand {
    /// Let ADDR open streams to private ports (applies at once, persists).
    Add { address: String },
    /// Stop trusting ADDR.
    Remove { address: String },
    /// The trusted addresses.
    List,
}

pub async fn run(client: &Client, command: TrustCommand) -> Result<Report, Failure> {
    match command {
        TrustCommand::Add { address } => {
            check_target(&address)?;
            let data = client.trust_add(&address).await.map_err(failure)?;
            let text = if data["changed"] == true {
                format!("trusted {address}")
            } else {
                format!("{address} was already trusted")
            };
            Ok(Report { data, text })
        }
        TrustCommand::Remove { address } => {
            check_target(&address)?;
            let data = client.trust_remove(&address).await.map_err(failure)?;
            let text = if data["changed"] == true {
                format!("no longer trusting {address}")
            } else {
                format!("{address} was not trusted")
            };
            Ok(Report { data, text })
        }
        TrustCommand::List => {
            let data = client.trust_list().await.map_err(failure)?;
            let text = data["trusted"]
                .as_array()
                .map(|list| {
                    list.iter()
                        .filter_map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            Ok(Report { data, text })
        }
    }
}
