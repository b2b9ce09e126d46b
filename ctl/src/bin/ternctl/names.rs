//! `ternctl find`, `ternctl name set|clear|forget|show` and `ternctl alias add|remove|list`:
//! reaching nodes by name. A name resolves through the operator's aliases first, then the
//! rendezvous (whose answer is checked against the key pinned for that name).

use clap::Subcommand;
use serde_json::Value;

use crate::output::{Failure, Report};
use crate::{check_target, failure};
use tern_ctl::Client;

#[derive(Subcommand)]
pub enum NameCommand {
    /// Claim NAME for this node at its rendezvous servers (first claim wins; kept across
    /// restarts). Lowercase a-z, 0-9 and '-', 1-63 characters.
    Set { name: String },
    /// Give up this node's name.
    Clear,
    /// Forget the key pinned for NAME: accept that NAME now belongs to another key.
    Forget { name: String },
    /// This node's name, and the names pinned so far.
    Show,
}

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Call ADDR by NAME on this node (overrides any rendezvous answer for NAME).
    Add { name: String, address: String },
    /// Remove the alias NAME.
    Remove { name: String },
    /// The aliases.
    List,
}

pub async fn find(client: &Client, target: &str) -> Result<Report, Failure> {
    check_target(target)?;
    let data = client.find(target).await.map_err(failure)?;
    let endpoints = list(&data["endpoints"], ", ");
    let text = format!(
        "address     {}\npublic_key  {}\nname        {}\nendpoints   {endpoints}\nvia         {}\nresolved    {}",
        text_of(&data["address"]),
        text_of(&data["public_key"]),
        text_of(&data["name"]),
        text_of(&data["via"]),
        text_of(&data["resolved"]),
    );
    Ok(Report { data, text })
}

pub async fn name(client: &Client, command: NameCommand) -> Result<Report, Failure> {
    match command {
        NameCommand::Set { name } => {
            let data = client.name_set(Some(&name)).await.map_err(failure)?;
            let mut text = format!("this node is now {name}");
            let pending = list(&data["not_registered"], "; ");
            if !pending.is_empty() {
                text.push_str(&format!(" (not registered yet: {pending})"));
            }
            Ok(Report { data, text })
        }
        NameCommand::Clear => {
            let data = client.name_set(None).await.map_err(failure)?;
            Ok(Report {
                data,
                text: "this node has no name now".into(),
            })
        }
        NameCommand::Forget { name } => {
            let data = client.name_forget(&name).await.map_err(failure)?;
            let text = match data["was_pinned_to"].as_str() {
                Some(address) => format!("forgot that {name} is {address}"),
                None => format!("{name} was not pinned"),
            };
            Ok(Report { data, text })
        }
        NameCommand::Show => {
            let data = client.names().await.map_err(failure)?;
            let mut text = format!("name  {}", text_of(&data["own"]));
            for (name, pin) in data["pinned"].as_object().into_iter().flatten() {
                text.push_str(&format!("\npinned  {name}  {}", text_of(&pin["address"])));
            }
            Ok(Report { data, text })
        }
    }
}

pub async fn alias(client: &Client, command: AliasCommand) -> Result<Report, Failure> {
    match command {
        AliasCommand::Add { name, address } => {
            let data = client.alias(&name, Some(&address)).await.map_err(failure)?;
            Ok(Report {
                data,
                text: format!("{name} is {address}"),
            })
        }
        AliasCommand::Remove { name } => {
            let data = client.alias(&name, None).await.map_err(failure)?;
            Ok(Report {
                data,
                text: format!("removed the alias {name}"),
            })
        }
        AliasCommand::List => {
            let all = client.names().await.map_err(failure)?;
            let data = all["aliases"].clone();
            let text = data
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, address)| format!("{name}  {}", text_of(address)))
                .collect::<Vec<_>>()
                .join("\n");
            Ok(Report { data, text })
        }
    }
}

/// A JSON string as text; anything else (null, say) as `-`.
fn text_of(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

fn list(value: &Value, separator: &str) -> String {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), String::from))
        .collect::<Vec<_>>()
        .join(separator)
}
