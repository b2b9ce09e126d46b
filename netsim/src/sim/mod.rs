//! The in-process simulator: real tern nodes (the code `ternd` runs, through its `Env`) on a
//! simulated network, under tokio's paused clock, repeatable from a seed.
//!
//! - [`net`]: the network — UDP sockets, datagrams delivered after a link latency in the
//!   order they were sent, a trace of every datagram; TCP links as in-memory pipes.
//! - [`env`]: one host's `Env` — its address on that network, a wall clock that follows
//!   virtual time, a seeded random source, and a disk in memory that outlives its node.
//! - [`nat`]: NAT boxes (mapping, filtering, port keeping, timeouts, UDP blocked), with the
//!   kernel lab's kinds as presets.
//! - [`app`]: an app on a host, speaking a node's local API over an in-memory pipe.
//!
//! Run it on a current-thread runtime with paused time
//! (`Builder::new_current_thread().enable_all().start_paused(true)`): with one thread and a
//! clock that only moves when every task waits, the same seed gives the same run.

pub mod app;
pub mod env;
pub mod nat;
pub mod net;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_daemon::daemon::{DEFAULT_PORT, Daemon, DaemonConfig, StartError};
use tern_daemon::home::Home;
use tern_proto::Name;

pub use app::App;
pub use env::SimEnv;
pub use nat::{Dependence, NatConfig};
pub use net::{Bursts, LinkModel, Network, TraceEntry};

/// Runs `simulation` on a fresh current-thread runtime with paused time, failing if it takes
/// longer than `within` of simulated time (a stuck simulation fails at once: the clock jumps
/// whenever every task waits). Dropping the runtime at the end stops every node it ran.
pub fn run_paused<T>(within: Duration, simulation: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        tokio::time::timeout(within, simulation)
            .await
            .unwrap_or_else(|_| {
                panic!("the simulation did not finish within {within:?} of simulated time")
            })
    })
}

/// Waits until every one of `daemons` has registered with its rendezvous.
pub async fn wait_registered(daemons: &[Arc<Daemon>]) {
    for daemon in daemons {
        while daemon.status()["registered"] != true {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A simulated internet and the hosts on it.
pub struct Sim {
    seed: u64,
    network: Arc<Network>,
    hosts: Mutex<BTreeMap<Ipv4Addr, Arc<SimEnv>>>,
}

impl Sim {
    /// A network whose links all take `latency` one way. Must run inside the runtime the
    /// nodes will run on (its delivery task starts here).
    pub fn new(seed: u64, latency: Duration) -> Self {
        Self {
            seed,
            network: Network::start(LinkModel::latency(latency), seed),
            hosts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The host at `ip`, made on first use. A host keeps its disk across node restarts.
    pub fn host(&self, ip: Ipv4Addr) -> Arc<SimEnv> {
        let mut hosts = self.hosts.lock().expect("host table lock");
        hosts
            .entry(ip)
            .or_insert_with(|| {
                let seed = self.seed ^ u64::from(u32::from(ip)).rotate_left(32);
                Arc::new(SimEnv::new(ip, self.network.clone(), seed))
            })
            .clone()
    }

    pub fn network(&self) -> &Arc<Network> {
        &self.network
    }

    /// Starts a node on `ip` (port 7440, home `/sim/IP`) that registers with `rendezvous`
    /// (`IP:PORT` each; none: it is its own) and claims `name`. Started again on the same
    /// host, it finds its home as it left it.
    pub fn start_node(
        &self,
        ip: Ipv4Addr,
        rendezvous: &[SocketAddr],
        name: Option<Name>,
    ) -> Result<Arc<Daemon>, StartError> {
        let host = self.host(ip);
        let mut config = DaemonConfig::new(
            Home::at(format!("/sim/{ip}")),
            SocketAddr::from((ip, DEFAULT_PORT)),
            rendezvous.iter().map(SocketAddr::to_string).collect(),
        );
        config.hostname = name;
        Daemon::start(config, host)
    }
}
