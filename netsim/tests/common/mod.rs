//! What the scenario tests share: where the shipped scenarios are, and running the
//! `tern-netsim` binary as a user does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

pub fn netsim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern-netsim"))
        .args(args)
        .output()
        .expect("tern-netsim runs")
}

pub fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
