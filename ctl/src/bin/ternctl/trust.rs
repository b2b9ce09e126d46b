//! `ternctl trust add|remove|list`: who may open streams to this node's private ports; and
//! `trust request|pending|approve|reject`: asking another operator for trust, and answering.

use clap::Subcommand;

use crate::output::{Failure, Lines, Report, escape_controls};
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
    /// Ask TARGET's operator to trust this node; approval makes each side trust the other.
    Request {
        target: String,
        /// Why, shown to the other operator (at most 500 bytes).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Trust requests waiting for your answer (and yours still unanswered).
    Pending,
    /// Approve ADDR's request: trust it here, and it trusts this node.
    Approve { address: String },
    /// Reject ADDR's request.
    Reject { address: String },
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
        TrustCommand::Request { target, reason } => {
            check_target(&target)?;
            let data = client
                .trust_request(&target, &reason)
                .await
                .map_err(failure)?;
            let text = format!(
                "asked {} to trust this node; its operator answers with `ternctl trust approve`",
                data["address"].as_str().unwrap_or(&target)
            );
            Ok(Report { data, text })
        }
        TrustCommand::Pending => {
            let data = client.trust_requests().await.map_err(failure)?;
            let mut lines: Vec<String> = data["pending"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{}  {}",
                        r["address"].as_str().unwrap_or("?"),
                        escape_controls(r["reason"].as_str().unwrap_or(""), Lines::Escape)
                    )
                })
                .collect();
            for r in data["outgoing"].as_array().into_iter().flatten() {
                let address = r["address"].as_str().unwrap_or("?");
                lines.push(format!("(asked {address}, no answer yet)"));
            }
            Ok(Report {
                data,
                text: lines.join("\n"),
            })
        }
        TrustCommand::Approve { address } => answer(client, &address, true).await,
        TrustCommand::Reject { address } => answer(client, &address, false).await,
    }
}

async fn answer(client: &Client, address: &str, approve: bool) -> Result<Report, Failure> {
    check_target(address)?;
    let data = client
        .trust_answer(address, approve)
        .await
        .map_err(failure)?;
    let mut text = if approve {
        format!("approved {address}: it may open streams to private ports now")
    } else {
        format!("rejected {address}")
    };
    if data["told"] != true {
        text.push_str(&format!(
            " (could not tell it yet: {})",
            data["told_error"].as_str().unwrap_or("unknown")
        ));
    }
    Ok(Report { data, text })
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
