//! A scenario's world in the kernel lab ([`crate::internet`]): every node is a real `ternd`
//! process in a network namespace of its own, sites sit behind nftables NAT routers, and
//! apps speak to each daemon over its Unix socket. Needs root.
//!
//! `exec` steps run a user's command in a node's namespace, with `TERN_HOME` set to that
//! node's home and ternctl on the `PATH`: their own agent, through real NAT.
//!
//! What the kernel mode cannot do is refused before anything starts: more than one node at a
//! site, a rendezvous behind NAT, NAT rebinding and wall-clock steps; a link's latency, jitter,
//! duplication, reordering, bandwidth and MTU (this kernel has no `tc netem`; a file that
//! leaves `latency` at its default runs at the lab's own, sub-millisecond, latency). Random
//! loss is applied with nftables (`numgen random`), partitions with drop rules on the lab's
//! bridge. Every process the world starts dies with tern-netsim, even when it is killed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use tern_daemon::env::BoxFuture;
use tern_daemon::home::Home;
use tern_proto::api::Request;

use super::file::{Action, Link, NatKind, Scenario};
use super::run::World;
use crate::internet::{self, Internet};
use crate::lab::Namespace;
use crate::local_api::{self, Answered};

const PORT: u16 = 7440;

/// A command an exec step started: its process group, and its exit code when it ends.
struct Started {
    name: String,
    group: Option<u32>,
    exited: tokio::task::JoinHandle<Result<i32, String>>,
}

impl Started {
    fn kill(&self) {
        kill_group(self.group);
        self.exited.abort();
    }
}

fn kill_group(group: Option<u32>) {
    if let Some(group) = group.and_then(|g| i32::try_from(g).ok()) {
        // SAFETY: kill(2) on a process group this world started; no memory involved.
        unsafe { libc::kill(-group, libc::SIGKILL) };
    }
}

/// Makes `command`'s process die with the thread that spawns it (tern-netsim killed, or
/// interrupted before it could clean up): no ternd or agent outlives the run.
fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(2) is async-signal-safe; the closure touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

struct KernelNode {
    namespace: Namespace,
    /// The node's address on the public segment: its own, or its router's.
    public: Ipv4Addr,
    listen: String,
    rendezvous: Vec<String>,
    home: PathBuf,
    process: Mutex<Option<Child>>,
}

pub struct KernelWorld {
    order: Vec<String>,
    nodes: BTreeMap<String, KernelNode>,
    core: Namespace,
    ternd: PathBuf,
    homes: PathBuf,
    /// The scenario's directory: where exec steps run.
    dir: PathBuf,
    /// Commands exec steps started.
    execs: Mutex<Vec<Started>>,
    /// Partitions in force, as (from, to) public addresses.
    cuts: Mutex<Vec<(Ipv4Addr, Ipv4Addr)>>,
    loss: Mutex<f64>,
    // Last: its namespaces go after the processes in them have been killed.
    _internet: Internet,
}

/// Why `scenario` cannot run in the kernel lab, if it cannot.
pub fn unsupported(scenario: &Scenario) -> Option<String> {
    // Anything but loss set away from the default link is refused.
    let lossless = |link: &Link| Link { loss: 0.0, ..*link };
    let mut per_site = BTreeMap::new();
    for node in &scenario.nodes {
        if let Some(site) = node.site {
            *per_site.entry(site).or_insert(0) += node.members().len();
        }
    }
    if let Some((&site, _)) = per_site.iter().find(|(_, n)| **n > 1) {
        return Some(format!(
            "site {:?} has more than one node; the kernel lab has one host per site",
            scenario.sites[site].name
        ));
    }
    for node in &scenario.nodes {
        for &server in &node.rendezvous {
            if scenario.nodes[server].site.is_some() {
                return Some(format!("{}'s rendezvous is behind NAT", node.name));
            }
        }
    }
    let links =
        std::iter::once(&scenario.link).chain(scenario.events.iter().filter_map(
            |e| match &e.action {
                Action::Link { link, .. } => Some(link),
                _ => None,
            },
        ));
    for link in links {
        if lossless(link) != Link::default() {
            return Some(
                "the kernel lab applies only random loss to links: latency, jitter, bursts, \
                 duplication, reordering, bandwidth and MTU need tc netem, which this kernel \
                 lacks (run in-process for those)"
                    .into(),
            );
        }
    }
    for event in &scenario.events {
        match &event.action {
            Action::Rebind(_) => return Some("NAT rebinding is in-process only".into()),
            Action::ClockStep { .. } => {
                return Some("a network namespace has no wall clock of its own to step".into());
            }
            Action::Link { host: Some(_), .. } => {
                return Some("the kernel lab's loss applies to every host at once".into());
            }
            _ => {}
        }
    }
    None
}

fn lab_kind(kind: NatKind) -> internet::NatKind {
    match kind {
        NatKind::FullCone => internet::NatKind::FullCone,
        NatKind::HomeRouter => internet::NatKind::HomeRouter,
        NatKind::CarrierGrade => internet::NatKind::CarrierGrade,
        NatKind::Symmetric => internet::NatKind::Symmetric,
        NatKind::UdpBlocked => internet::NatKind::UdpBlocked,
    }
}

/// `ternd` beside this program (a workspace build puts them together), or `TERN_TERND`.
fn find_ternd() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TERN_TERND") {
        return Ok(path.into());
    }
    let here = std::env::current_exe().map_err(|e| format!("where am I: {e}"))?;
    // Test binaries run from target/*/deps, one level below the workspace's binaries.
    let dirs = here.ancestors().skip(1).take(2);
    dirs.map(|d| d.join("ternd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "no ternd next to tern-netsim: run `cargo build --workspace`, or set TERN_TERND".into()
        })
}

impl KernelWorld {
    pub fn start(scenario: &Scenario) -> Result<Self, String> {
        if let Some(why) = unsupported(scenario) {
            return Err(format!("not in kernel mode: {why}"));
        }
        let ternd = find_ternd()?;
        let lab = |e: crate::lab::LabError| e.to_string();
        let mut internet = Internet::new().map_err(lab)?;
        let homes = std::env::temp_dir().join(format!("tern-netsim-{}", std::process::id()));
        std::fs::create_dir_all(&homes).map_err(|e| format!("{}: {e}", homes.display()))?;
        let mut order = Vec::new();
        let mut nodes: BTreeMap<String, KernelNode> = BTreeMap::new();
        for entry in &scenario.nodes {
            let rendezvous: Vec<String> = entry
                .rendezvous
                .iter()
                .map(|&i| format!("{}:{PORT}", nodes[&scenario.nodes[i].name].public))
                .collect();
            for name in entry.members() {
                let (namespace, public, listen) = match entry.site {
                    None => {
                        let host = internet.public_host(&name).map_err(lab)?;
                        let listen = format!("{}:{PORT}", host.address);
                        (host.namespace, host.address, listen)
                    }
                    Some(site) => {
                        let kind = lab_kind(scenario.sites[site].nat);
                        let (host, router) = internet.behind_nat(&name, kind).map_err(lab)?;
                        (host.namespace, router.public, format!("0.0.0.0:{PORT}"))
                    }
                };
                let home = homes.join(&name);
                order.push(name.clone());
                nodes.insert(
                    name,
                    KernelNode {
                        namespace,
                        public,
                        listen,
                        rendezvous: rendezvous.clone(),
                        home,
                        process: Mutex::new(None),
                    },
                );
            }
        }
        let world = Self {
            order,
            nodes,
            core: internet.core().clone(),
            ternd,
            homes,
            dir: scenario.dir.clone(),
            execs: Mutex::default(),
            cuts: Mutex::default(),
            loss: Mutex::new(0.0),
            _internet: internet,
        };
        world.set_loss(scenario.link.loss)?;
        for name in &world.order {
            world.spawn(name)?;
        }
        Ok(world)
    }

    fn node(&self, name: &str) -> Result<&KernelNode, String> {
        self.nodes
            .get(name)
            .ok_or_else(|| format!("no node {name}"))
    }

    fn spawn(&self, name: &str) -> Result<(), String> {
        let node = self.node(name)?;
        std::fs::create_dir_all(&node.home).map_err(|e| format!("{}: {e}", node.home.display()))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.home.join("ternd.log"))
            .map_err(|e| format!("{name}'s log: {e}"))?;
        let mut command: Command = node.namespace.command(&self.ternd);
        command
            .arg("--home")
            .arg(&node.home)
            .args(["--listen", &node.listen, "--hostname", name]);
        for server in &node.rendezvous {
            command.args(["--rendezvous", server]);
        }
        die_with_parent(&mut command);
        let child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting ternd for {name}: {e}"))?;
        *node.process.lock().expect("process lock") = Some(child);
        Ok(())
    }

    /// Rewrites the lab's filter table on the bridge: the partitions and the loss in force.
    fn filter(&self) -> Result<(), String> {
        let mut rules = String::from(
            "table bridge tern_netsim\ndelete table bridge tern_netsim\n\
             table bridge tern_netsim {\n  chain forward {\n    type filter hook forward priority 0;\n",
        );
        for (from, to) in self.cuts.lock().expect("cuts lock").iter() {
            rules.push_str(&format!("    ip saddr {from} ip daddr {to} drop\n"));
        }
        let loss = *self.loss.lock().expect("loss lock");
        if loss > 0.0 {
            let per_mille = (loss * 1000.0).round() as u32;
            rules.push_str(&format!(
                "    meta l4proto udp numgen random mod 1000 < {per_mille} drop\n"
            ));
        }
        rules.push_str("  }\n}\n");
        self.core.nft(&rules).map_err(|e| e.to_string())
    }

    fn set_loss(&self, loss: f64) -> Result<(), String> {
        *self.loss.lock().expect("loss lock") = loss;
        self.filter()
    }

    fn publics(&self, names: &[String]) -> Vec<Ipv4Addr> {
        names
            .iter()
            .filter_map(|n| self.nodes.get(n))
            .map(|n| n.public)
            .collect()
    }

    async fn act(&self, action: &Action) -> Result<String, String> {
        match action {
            Action::Partition { a, b, one_way } => {
                let (a_ips, b_ips) = (self.publics(a), self.publics(b));
                {
                    let mut cuts = self.cuts.lock().expect("cuts lock");
                    for &x in &a_ips {
                        for &y in &b_ips {
                            cuts.push((x, y));
                            if !one_way {
                                cuts.push((y, x));
                            }
                        }
                    }
                }
                self.filter()?;
                Ok(String::new())
            }
            Action::Heal => {
                self.cuts.lock().expect("cuts lock").clear();
                self.filter()?;
                Ok(String::new())
            }
            Action::Link { link, .. } => {
                self.set_loss(link.loss)?;
                Ok("only its loss applies in the kernel lab".into())
            }
            Action::Crash(name) => {
                let child = self
                    .node(name)?
                    .process
                    .lock()
                    .expect("process lock")
                    .take();
                let mut child = child.ok_or_else(|| format!("{name} is already down"))?;
                let _ = child.kill();
                let _ = child.wait();
                Ok("ternd killed (SIGKILL)".into())
            }
            Action::Restart(name) => {
                if self
                    .node(name)?
                    .process
                    .lock()
                    .expect("process lock")
                    .is_some()
                {
                    return Err(format!("{name} is running: crash it first"));
                }
                self.spawn(name)?;
                Ok(String::new())
            }
            Action::Exec {
                node,
                name,
                command,
            } => {
                let started = self.exec(node, name, command)?;
                self.execs.lock().expect("exec lock").push(started);
                Ok(String::new())
            }
            Action::Rebind(_) | Action::ClockStep { .. } => {
                Err("not in kernel mode (refused before the run)".into())
            }
        }
    }
}

impl KernelWorld {
    /// Starts `command` in `node`'s namespace (in a process group of its own, so that
    /// killing it kills all it started), its output in the node's home as `exec-NAME.log`.
    fn exec(&self, node: &str, name: &str, command: &[String]) -> Result<Started, String> {
        use std::os::unix::process::CommandExt;
        let at = self.node(node)?;
        let log_path = at.home.join(format!("exec-{name}.log"));
        let log =
            std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let bin = self
            .ternd
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let path = match std::env::var_os("PATH") {
            Some(rest) => {
                std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&rest)))
            }
            None => std::env::join_paths([bin]),
        }
        .map_err(|e| e.to_string())?;
        let mut std_command = at.namespace.command(&command[0]);
        std_command
            .args(&command[1..])
            .current_dir(&self.dir)
            .env("TERN_HOME", &at.home)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .process_group(0);
        die_with_parent(&mut std_command);
        let mut child = tokio::process::Command::from(std_command)
            .spawn()
            .map_err(|e| format!("starting {name} ({}): {e}", command[0]))?;
        let group = child.id();
        let task_name = name.to_string();
        let exited = tokio::spawn(async move {
            let name = task_name;
            let status = child.wait().await.map_err(|e| format!("{name}: {e}"));
            // What the command left running in the background ends with it.
            kill_group(group);
            let status = status?;
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            status.code().ok_or_else(|| {
                format!(
                    "killed by a signal; last output: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                )
            })
        });
        Ok(Started {
            name: name.to_string(),
            group,
            exited,
        })
    }
}

impl Drop for KernelWorld {
    fn drop(&mut self) {
        for started in self.execs.lock().expect("exec lock").iter() {
            started.kill();
        }
        for node in self.nodes.values() {
            if let Some(mut child) = node.process.lock().expect("process lock").take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.homes);
    }
}

async fn connect(socket: &Path) -> Result<tokio::net::UnixStream, String> {
    tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))
}

impl World for KernelWorld {
    fn nodes(&self) -> Vec<String> {
        self.order.clone()
    }

    fn request<'a>(
        &'a self,
        node: &'a str,
        request: Request,
    ) -> BoxFuture<'a, Result<Answered, String>> {
        Box::pin(async move {
            let socket = Home::at(&self.node(node)?.home).socket_path();
            let stream = connect(&socket).await?;
            local_api::request(Box::new(stream), &request)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn apply<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(self.act(action))
    }

    fn exit_codes(
        &self,
        deadline: tokio::time::Instant,
    ) -> BoxFuture<'_, BTreeMap<String, Result<i32, String>>> {
        Box::pin(async move {
            let execs = std::mem::take(&mut *self.execs.lock().expect("exec lock"));
            let mut codes = BTreeMap::new();
            for mut started in execs {
                let code = match tokio::time::timeout_at(deadline, &mut started.exited).await {
                    Ok(Ok(code)) => code,
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => {
                        started.kill();
                        Err("still running at the end of the run: killed".into())
                    }
                };
                codes.insert(started.name, code);
            }
            codes
        })
    }

    fn trace(&self) -> Option<(usize, u64)> {
        None
    }
}
