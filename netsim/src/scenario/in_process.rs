//! A scenario's world in-process: real nodes on the simulated network ([`crate::sim`]),
//! under tokio's paused clock, each site behind its NAT box.
//!
//! Addresses: public nodes get 203.0.113.10 and up; site `k` (from 1) has its NAT at
//! 198.51.100.`k` and its hosts at 10.1.`k`.2 and up. A carrier-grade site's carrier NAT is at
//! 198.51.100.`k`, its home router at 100.64.`k`.2.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_daemon::daemon::{DEFAULT_PORT, Daemon};
use tern_daemon::env::BoxFuture;
use tern_proto::api::Request;

use super::file::{Action, Link, NatKind, Scenario};
use super::run::World;
use crate::local_api::Answered;
use crate::sim::{App, Bursts, LinkModel, NatConfig, Sim};

struct SimNode {
    ip: Ipv4Addr,
    rendezvous: Vec<SocketAddr>,
    /// None while crashed.
    daemon: Mutex<Option<Arc<Daemon>>>,
}

pub struct SimWorld {
    sim: Sim,
    /// In the scenario's order (rendezvous first).
    order: Vec<String>,
    nodes: BTreeMap<String, SimNode>,
    sites: BTreeMap<String, Ipv4Addr>,
}

fn link_model(link: &Link) -> LinkModel {
    LinkModel {
        latency: link.latency,
        jitter: link.jitter,
        loss: link.loss,
        bursts: (link.burst > 0.0).then_some(Bursts {
            start: link.burst,
            mean_len: link.burst_len.max(1.0),
        }),
        duplicate: link.duplicate,
        reorder: link.reorder,
        bandwidth: link.bandwidth,
        mtu: link.mtu,
    }
}

fn nat_config(kind: NatKind) -> NatConfig {
    match kind {
        NatKind::FullCone => NatConfig::full_cone(),
        NatKind::HomeRouter | NatKind::CarrierGrade => NatConfig::home_router(),
        NatKind::Symmetric => NatConfig::symmetric(),
        NatKind::UdpBlocked => NatConfig::udp_blocked(),
    }
}

/// Why a scenario with `exec` steps does not run in-process.
pub const EXEC_IN_KERNEL_MODE: &str = "exec steps run only in kernel mode (--kernel): a simulated node has no namespace to run a \
     command in";

impl SimWorld {
    /// Builds the network and starts every node. Must run inside the paused runtime.
    pub fn start(scenario: &Scenario, seed: u64) -> Result<Self, String> {
        if scenario
            .events
            .iter()
            .any(|e| matches!(e.action, Action::Exec { .. }))
        {
            return Err(EXEC_IN_KERNEL_MODE.into());
        }
        let sim = Sim::new(seed, scenario.link.latency);
        sim.network().set_link(link_model(&scenario.link));
        let mut sites = BTreeMap::new();
        for (index, site) in scenario.sites.iter().enumerate() {
            let k = u8::try_from(index + 1).map_err(|_| "at most 254 sites".to_string())?;
            let mut public = Ipv4Addr::new(198, 51, 100, k);
            if site.nat == NatKind::CarrierGrade {
                // The carrier's NAT in front, with the home router's address inside it.
                sim.network()
                    .add_nat(NatConfig::home_router(), public, [100, 64, k]);
                public = Ipv4Addr::new(100, 64, k, 2);
            }
            let mut config = nat_config(site.nat);
            config.preserve_port = site.preserve_port.unwrap_or(config.preserve_port);
            config.timeout = site.timeout.unwrap_or(config.timeout);
            config.hairpin = site.hairpin;
            sim.network().add_nat(config, public, [10, 1, k]);
            sites.insert(site.name.clone(), public);
        }
        let mut next_public = u32::from(Ipv4Addr::new(203, 0, 113, 10));
        let mut next_inside: BTreeMap<usize, u8> = BTreeMap::new();
        let mut order = Vec::new();
        let mut nodes: BTreeMap<String, SimNode> = BTreeMap::new();
        for entry in &scenario.nodes {
            let rendezvous: Vec<SocketAddr> = entry
                .rendezvous
                .iter()
                .map(|&i| SocketAddr::from((nodes[&scenario.nodes[i].name].ip, DEFAULT_PORT)))
                .collect();
            for name in entry.members() {
                let ip = match entry.site {
                    None => {
                        next_public += 1;
                        Ipv4Addr::from(next_public - 1)
                    }
                    Some(site) => {
                        let host = next_inside.entry(site).or_insert(2);
                        *host = host.checked_add(1).ok_or("at most 253 nodes a site")?;
                        Ipv4Addr::new(10, 1, site as u8 + 1, *host - 1)
                    }
                };
                let node = SimNode {
                    ip,
                    rendezvous: rendezvous.clone(),
                    daemon: Mutex::new(None),
                };
                order.push(name.clone());
                nodes.insert(name, node);
            }
        }
        let world = Self {
            sim,
            order,
            nodes,
            sites,
        };
        for name in &world.order {
            world.boot(name)?;
        }
        Ok(world)
    }

    fn node(&self, name: &str) -> Result<&SimNode, String> {
        self.nodes
            .get(name)
            .ok_or_else(|| format!("no node {name}"))
    }

    fn boot(&self, name: &str) -> Result<Arc<Daemon>, String> {
        let node = self.node(name)?;
        let claimed = name.parse().map_err(|e| format!("{name}: {e}"))?;
        let daemon = self
            .sim
            .start_node(node.ip, &node.rendezvous, Some(claimed))
            .map_err(|e| format!("{name} did not start: {e}"))?;
        *node.daemon.lock().expect("node lock") = Some(daemon.clone());
        Ok(daemon)
    }

    fn daemon(&self, name: &str) -> Result<Arc<Daemon>, String> {
        self.node(name)?
            .daemon
            .lock()
            .expect("node lock")
            .clone()
            .ok_or_else(|| format!("{name} is down"))
    }

    fn ips(&self, names: &[String]) -> Vec<IpAddr> {
        names
            .iter()
            .filter_map(|n| self.nodes.get(n))
            .map(|n| n.ip.into())
            .collect()
    }

    async fn act(&self, action: &Action) -> Result<String, String> {
        let network = self.sim.network();
        Ok(match action {
            Action::Partition { a, b, one_way } => {
                network.partition(&self.ips(a), &self.ips(b), *one_way);
                String::new()
            }
            Action::Heal => {
                network.heal();
                String::new()
            }
            Action::Link { host, link } => {
                match host {
                    Some(host) => network.set_uplink(self.node(host)?.ip.into(), link_model(link)),
                    None => network.set_link(link_model(link)),
                }
                String::new()
            }
            Action::Crash(name) => {
                let node = self.node(name)?;
                let daemon = node.daemon.lock().expect("node lock").take();
                let daemon = daemon.ok_or_else(|| format!("{name} is already down"))?;
                // Down first: the dying node's goodbyes go nowhere, as after a power cut.
                network.set_down(node.ip.into(), true);
                daemon.node().stop_tasks();
                drop(daemon);
                "the host is down: nothing it sends leaves".into()
            }
            Action::Restart(name) => {
                let node = self.node(name)?;
                if node.daemon.lock().expect("node lock").is_some() {
                    return Err(format!("{name} is running: crash it first"));
                }
                network.set_down(node.ip.into(), false);
                // quinn lets the crashed node's socket go when its endpoint driver next runs.
                let mut tries = 0;
                let daemon = loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    match self.boot(name) {
                        Ok(daemon) => break daemon,
                        Err(e) if tries == 100 => return Err(e),
                        Err(_) => tries += 1,
                    }
                };
                format!("address {}", daemon.node().address())
            }
            Action::Rebind(site) => {
                network.rebind_nat(self.sites[site]);
                String::new()
            }
            Action::ClockStep { node, seconds } => {
                self.sim.host(self.node(node)?.ip).step_clock(*seconds);
                String::new()
            }
            Action::Exec { .. } => return Err(EXEC_IN_KERNEL_MODE.into()),
        })
    }
}

impl World for SimWorld {
    fn nodes(&self) -> Vec<String> {
        self.order.clone()
    }

    fn request<'a>(
        &'a self,
        node: &'a str,
        request: Request,
    ) -> BoxFuture<'a, Result<Answered, String>> {
        Box::pin(async move {
            let app = App::new(self.daemon(node)?);
            app.request(&request).await.map_err(|e| e.to_string())
        })
    }

    fn apply<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(self.act(action))
    }

    fn exit_codes(
        &self,
        _deadline: tokio::time::Instant,
    ) -> BoxFuture<'_, BTreeMap<String, Result<i32, String>>> {
        Box::pin(async { BTreeMap::new() })
    }

    fn trace(&self) -> Option<(usize, u64)> {
        let trace = self.sim.network().trace();
        // A fixed hasher: the same trace gives the same digest in every process.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for entry in &trace {
            (entry.at, entry.from, entry.to, entry.len).hash(&mut hasher);
        }
        Some((trace.len(), hasher.finish()))
    }
}
