//! `ternd`: the tern node daemon.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tern_daemon::home::Home;

#[derive(Parser)]
#[command(
    name = "ternd",
    version,
    about = "The tern node daemon: a permanent address for an agent, reachable from anywhere"
)]
struct Cli {
    /// The node's state directory (identity, trust list, local API socket).
    /// Default: $TERN_HOME, else ~/.local/share/tern.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print this node's address and public key (creates the identity on first use).
    Id {
        /// Print one JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ternd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let home = Home::resolve(cli.home)?;
    match cli.command {
        Command::Id { json } => {
            let identity = home
                .load_or_create_identity()
                .with_context(|| format!("loading the identity of {}", home.dir().display()))?;
            let public = identity.public();
            if json {
                let doc = serde_json::json!({
                    "address": public.address(),
                    "public_key": hex_key(public.key_bytes()),
                    "work_nonce": public.nonce(),
                });
                println!("{doc}");
            } else {
                println!("address     {}", public.address());
                println!("public_key  {}", hex_key(public.key_bytes()));
            }
        }
    }
    Ok(())
}

fn hex_key(key: [u8; 32]) -> String {
    hex::encode(key)
}
