//! `tern-netsim`: run scenario files against real tern nodes, in-process on a simulated
//! network or in the kernel lab, and manage the lab.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tern_netsim::scenario::{self, Report, Scenario};

#[derive(Parser)]
#[command(
    name = "tern-netsim",
    version,
    about = "tern's network simulator and lab: run scenario files against real tern nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario; exit 0 only when every check passes.
    Run {
        file: PathBuf,
        /// Overrides the file's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Run in network namespaces with the real ternd binary instead of in-process.
        #[arg(long)]
        kernel: bool,
        /// Also write the report as JSON here.
        #[arg(long, value_name = "OUT")]
        json: Option<PathBuf>,
        /// Also write the checks as JUnit XML here.
        #[arg(long, value_name = "OUT")]
        junit: Option<PathBuf>,
        /// Run twice from the same seed and fail unless both runs agree.
        #[arg(long)]
        check_determinism: bool,
    },
    /// Check a scenario file without running it.
    Check { file: PathBuf },
    /// Delete lab network namespaces left behind by test runs that were killed.
    Cleanup,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("tern-netsim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool> {
    match Cli::parse().command {
        Command::Check { file } => {
            let scenario = scenario::load(&file)?;
            println!(
                "{}: scenario {:?} is valid: {} nodes, {} apps, {} events, {} checks",
                file.display(),
                scenario.name,
                scenario
                    .nodes
                    .iter()
                    .map(|n| n.members().len())
                    .sum::<usize>(),
                scenario.apps.len(),
                scenario.events.len(),
                scenario.checks.len()
            );
            Ok(true)
        }
        Command::Run {
            file,
            seed,
            kernel,
            json,
            junit,
            check_determinism,
        } => {
            let scenario = scenario::load(&file)?;
            let seed = seed.unwrap_or(scenario.seed);
            if kernel && check_determinism {
                bail!(
                    "--check-determinism is for in-process runs: the kernel lab runs in real time"
                );
            }
            if kernel && let Some(why) = scenario::kernel::unsupported(&scenario) {
                bail!("{}: not in kernel mode: {why}", file.display());
            }
            let report = run_once(&scenario, seed, kernel)?;
            print!("{}", report.text());
            if let Some(out) = &json {
                write(out, &serde_json::to_string_pretty(&report.json())?)?;
            }
            if let Some(out) = &junit {
                write(out, &report.junit())?;
            }
            let mut passed = report.passed();
            if check_determinism {
                let again = run_once(&scenario, seed, kernel)?;
                match again.repeatable() == report.repeatable() {
                    true => {
                        println!("determinism: a second run from seed {seed} gave the same report")
                    }
                    false => {
                        passed = false;
                        println!("determinism: FAIL, a second run from seed {seed} differs:");
                        print!("{}", again.repeatable());
                    }
                }
            }
            Ok(passed)
        }
        Command::Cleanup => {
            let removed = tern_netsim::lab::remove_stale()
                .context("removing stale lab namespaces (run as root)")?;
            for name in &removed {
                println!("removed {name}");
            }
            println!("{} stale namespace(s) removed", removed.len());
            Ok(true)
        }
    }
}

/// One run, with a progress line on stderr while it takes more than a moment.
fn run_once(scenario: &Scenario, seed: u64, kernel: bool) -> Result<Report> {
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (progress, done) = (progress.clone(), done.clone());
        let total = scenario.duration.as_secs_f64();
        let terminal = std::io::stderr().is_terminal();
        std::thread::spawn(move || {
            let every = if terminal { 1 } else { 15 };
            let mut waited = 0;
            while !done.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                waited += 1;
                if waited % (every * 10) == 0 {
                    let at = progress.load(Relaxed) as f64 / 1000.0;
                    let line = format!("tern-netsim: {at:.1} s of {total:.0} s run time");
                    match terminal {
                        true => eprint!("\r{line}"),
                        false => eprintln!("{line}"),
                    }
                }
            }
            if terminal && waited >= 10 {
                eprint!("\r\x1b[K");
            }
        })
    };
    let report = match kernel {
        true => scenario::run_kernel(scenario, seed, progress),
        false => scenario::run_in_process(scenario, seed, progress),
    };
    done.store(true, Relaxed);
    let _ = reporter.join();
    report.map_err(|e| anyhow::anyhow!("the scenario {:?} could not run: {e}", scenario.name))
}

fn write(out: &Path, text: &str) -> Result<()> {
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}
