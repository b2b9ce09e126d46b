//! Scenarios: a TOML file of sites, nodes, apps, a timeline and checks ([`file`]), run
//! in-process on the simulator ([`in_process`]) or in the kernel lab, with the built-in apps
//! ([`traffic`]), judged ([`run`]) and reported ([`report`]). `tern-netsim run` is its CLI.

pub mod file;
pub mod in_process;
pub mod kernel;
pub mod report;
pub mod run;
pub mod traffic;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub use file::{Scenario, ScenarioError, load, parse};
pub use report::Report;

use crate::sim::run_paused;

/// Simulated time past the scenario's duration before a stuck run is called stuck.
const GRACE: Duration = Duration::from_secs(60);

/// Runs `scenario` in-process from `seed`: real nodes on the simulated network under paused
/// time, on a runtime of its own. `progress` follows the run time of its latest event (ms).
pub fn run_in_process(
    scenario: &Scenario,
    seed: u64,
    progress: Arc<AtomicU64>,
) -> Result<Report, String> {
    let wall = std::time::Instant::now();
    let outcome = run_paused(scenario.duration + GRACE, async {
        let log = run::Log::new(progress);
        let world = Arc::new(in_process::SimWorld::start(scenario, seed)?);
        Ok::<_, String>(run::run(world, scenario, log).await)
    })?;
    Ok(Report::new(
        &scenario.name,
        seed,
        "in-process",
        outcome,
        wall.elapsed(),
    ))
}

/// Runs `scenario` in the kernel lab: real `ternd` processes in network namespaces behind
/// nftables NAT, in real time (needs root). The seed is reported; the kernel does not take it.
pub fn run_kernel(
    scenario: &Scenario,
    seed: u64,
    progress: Arc<AtomicU64>,
) -> Result<Report, String> {
    let wall = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))?;
    let outcome = runtime.block_on(async {
        let world = Arc::new(kernel::KernelWorld::start(scenario)?);
        let log = run::Log::new(progress);
        Ok::<_, String>(run::run(world, scenario, log).await)
    })?;
    Ok(Report::new(
        &scenario.name,
        seed,
        "kernel",
        outcome,
        wall.elapsed(),
    ))
}
