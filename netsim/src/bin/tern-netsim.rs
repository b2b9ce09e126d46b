//! `tern-netsim`: manage tern's network lab.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "tern-netsim",
    version,
    about = "tern's network lab and simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Delete lab network namespaces left behind by test runs that were killed.
    Cleanup,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Cleanup => {
            let removed = tern_netsim::lab::remove_stale()
                .context("removing stale lab namespaces (run as root)")?;
            for name in &removed {
                println!("removed {name}");
            }
            println!("{} stale namespace(s) removed", removed.len());
        }
    }
    Ok(())
}
