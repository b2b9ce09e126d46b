//! `ternctl`: operate a local tern node. One module per command.

mod id;
mod output;

use clap::{Parser, Subcommand};
use output::{Failure, print_failure, print_success};
use std::path::PathBuf;
use std::process::ExitCode;
use tern_daemon::home::Home;

#[derive(Parser)]
#[command(name = "ternctl", version, about = "Operate a local tern node")]
struct Cli {
    /// The node's state directory. Default: $TERN_HOME, else ~/.local/share/tern.
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<PathBuf>,
    /// Print one JSON document: {"ok": true, "data": ...} or {"ok": false, "error": {...}}.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// This node's address and public key.
    Id,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = Home::resolve(cli.home)
        .map_err(|e| Failure::new("no_home", e.to_string()))
        .and_then(|home| match cli.command {
            Command::Id => id::run(&home),
        });
    match outcome {
        Ok(report) => {
            print_success(cli.json, &report);
            ExitCode::SUCCESS
        }
        Err(failure) => {
            print_failure(cli.json, &failure);
            ExitCode::FAILURE
        }
    }
}
