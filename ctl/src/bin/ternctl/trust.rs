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
            change(client, &address, true, ("trusted", "was already trusted")).await
        }
        TrustCommand::Remove { address } => {
            change(
                client,
                &address,
                false,
                ("no longer trusting", "was not trusted"),
            )
            .await
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

/// Adds or removes one address; `said` is (what a change says, what no change says).
async fn change(
    client: &Client,
    address: &str,
    trust: bool,
    said: (&str, &str),
) -> Result<Report, Failure> {
    check_target(address)?;
    let data = if trust {
        client.trust_add(address).await
    } else {
        client.trust_remove(address).await
    }
    .map_err(failure)?;
    let text = if data["changed"] == true {
        format!("{} {address}", said.0)
    } else {
        format!("{address} {}", said.1)
    };
    Ok(Report { data, text })
}
