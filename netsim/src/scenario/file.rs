//! The scenario file (TOML): sites and their NATs, nodes, the link, apps, a timeline of
//! events and the checks. [`load`] reads and checks one, refusing a wrong file before anything
//! runs with the file, line and key at fault; what it returns names only things that exist.
//!
//! ```toml
//! name = "partition during a transfer"
//! duration = "120s"            # simulated time the run may take
//! [link]                       # what every datagram meets (one way)
//! latency = "20ms"
//! [[site]]                     # a NAT and the hosts behind it
//! name = "home"
//! nat = "home-router"          # full-cone, home-router, carrier-grade, symmetric, udp-blocked
//! [[node]]
//! name = "rv"                  # also the name it claims; no rendezvous: it is one
//! [[node]]
//! name = "alice"
//! site = "home"
//! rendezvous = ["rv"]
//! [[app]]
//! name = "bulk"
//! kind = "bulk"                # bulk, rpc, mcp, ping
//! from = "alice"
//! to = "bob"
//! bytes = "4MiB"
//! [[event]]
//! at = "3s"
//! partition = { a = ["alice"], b = ["bob"] }
//! [[check]]
//! delivered = "bulk"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read the scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: `{key}`: {message}")]
    Invalid {
        path: String,
        line: usize,
        key: String,
        message: String,
    },
}

/// A scenario as checked: every name it uses exists, and every time is within the run.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    /// The file's directory: where `exec` commands run.
    pub dir: PathBuf,
    pub seed: u64,
    pub duration: Duration,
    pub link: Link,
    pub sites: Vec<Site>,
    pub nodes: Vec<Node>,
    pub apps: Vec<App>,
    pub events: Vec<Event>,
    pub checks: Vec<Check>,
}

/// What datagrams meet on their way, one direction. Unset keys: 10 ms latency, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Link {
    #[serde(deserialize_with = "duration")]
    pub latency: Duration,
    #[serde(deserialize_with = "duration")]
    pub jitter: Duration,
    /// The chance, 0 to 1, that a datagram is lost.
    pub loss: f64,
    /// The chance, 0 to 1, that a datagram starts a burst of losses.
    pub burst: f64,
    /// Datagrams a loss burst takes, on average.
    pub burst_len: f64,
    /// The chance, 0 to 1, that a datagram arrives twice.
    pub duplicate: f64,
    /// The chance, 0 to 1, that a datagram is held back behind later ones.
    pub reorder: f64,
    /// Bytes per second a host's uplink carries (0: no limit).
    #[serde(deserialize_with = "size")]
    pub bandwidth: u64,
    /// Larger datagrams are dropped (0: no limit).
    pub mtu: usize,
}

impl Default for Link {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            burst: 0.0,
            burst_len: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            bandwidth: 0,
            mtu: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    FullCone,
    HomeRouter,
    /// A home router behind the carrier's NAT (each like a home router).
    CarrierGrade,
    Symmetric,
    UdpBlocked,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    pub nat: NatKind,
    /// Overrides of the preset.
    pub preserve_port: Option<bool>,
    pub timeout: Option<Duration>,
    pub hairpin: bool,
}

#[derive(Debug, Clone)]
pub struct Node {
    /// The node's name; with `count`, the group's, its nodes `NAME-1` … `NAME-COUNT`.
    pub name: String,
    /// Index into `sites`; None: a public host.
    pub site: Option<usize>,
    /// Indices into `nodes` (the first of each group).
    pub rendezvous: Vec<usize>,
    pub count: Option<usize>,
}

impl Node {
    /// The names of the nodes this entry stands for.
    pub fn members(&self) -> Vec<String> {
        match self.count {
            None => vec![self.name.clone()],
            Some(n) => (1..=n).map(|i| format!("{}-{i}", self.name)).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// `bytes` from `from` to `to` on one stream, checked byte for byte.
    Bulk,
    /// JSON-RPC requests from `from` to `to`, `rate` a second, redialling when it breaks.
    Rpc,
    /// An MCP-style session: initialize, then tool calls during which the server asks the
    /// client something (server-to-client requests) and sends progress notifications.
    Mcp,
    /// Every node of `from` pings every node of `to` by name.
    Ping,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub kind: AppKind,
    /// Node names (a group stands for all its nodes).
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub port: u16,
    pub start: Duration,
    pub bytes: u64,
    pub requests: u64,
    pub rate: f64,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub at: Duration,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub enum Action {
    /// Datagrams between the two groups are dropped (`a` to `b` only when one way).
    Partition {
        a: Vec<String>,
        b: Vec<String>,
        one_way: bool,
    },
    Heal,
    /// What datagrams meet from now on: from `host` only, or everywhere.
    Link {
        host: Option<String>,
        link: Link,
    },
    /// The node stops at once: no goodbye to its peers, what it had not saved is lost.
    Crash(String),
    /// A crashed node starts again with its home.
    Restart(String),
    /// The site's NAT gives every mapping a new public port.
    Rebind(String),
    /// The node's wall clock jumps (back, when negative).
    ClockStep {
        node: String,
        seconds: i64,
    },
    /// Runs a command in the node's network namespace, with `TERN_HOME` set to the node's
    /// home and ternctl on the `PATH` (kernel mode).
    Exec {
        node: String,
        name: String,
        command: Vec<String>,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Partition { a, b, one_way } => {
                let arrow = if *one_way { "->" } else { "<->" };
                write!(f, "partition {} {arrow} {}", a.join(","), b.join(","))
            }
            Action::Heal => write!(f, "heal: every partition ends"),
            Action::Link { host, link } => {
                write!(
                    f,
                    "link {}: {link:?}",
                    host.as_deref().unwrap_or("everywhere")
                )
            }
            Action::Crash(node) => write!(f, "crash {node}"),
            Action::Restart(node) => write!(f, "restart {node}"),
            Action::Rebind(site) => write!(f, "rebind {site}: every mapping moves to a new port"),
            Action::ClockStep { node, seconds } => write!(f, "clock step {node}: {seconds:+} s"),
            Action::Exec {
                node,
                name,
                command,
            } => write!(f, "exec {name} on {node}: {}", command.join(" ")),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Check {
    /// Everything the app sent arrived, once, byte for byte, and it finished.
    Delivered(String),
    /// At `at`, `from`'s connection to `to` is on `path` ("direct" or "relay").
    Path {
        from: String,
        to: String,
        path: String,
        at: Duration,
    },
    /// Every time the app lost its peer, it was working again within `within`.
    Reconnected { app: String, within: Duration },
    /// The app's request latency at the `quantile` is at most `max`.
    Latency {
        app: String,
        quantile: f64,
        max: Duration,
    },
    /// The node has the address it started with (after restarts too).
    KeptAddress(String),
    /// The `exec` step ended by the end of the run, with this exit code.
    ExitCode { exec: String, code: i32 },
}

impl Check {
    pub fn title(&self) -> String {
        match self {
            Check::Delivered(app) => format!("delivered {app}"),
            Check::Path { from, to, path, at } => {
                format!("path {from} -> {to} is {path} at {}", seconds(*at))
            }
            Check::Reconnected { app, within } => {
                format!("reconnected {app} within {}", seconds(*within))
            }
            Check::Latency { app, quantile, max } => format!(
                "latency {app} p{} <= {} ms",
                quantile * 100.0,
                max.as_secs_f64() * 1000.0
            ),
            Check::KeptAddress(node) => format!("kept address {node}"),
            Check::ExitCode { exec, code } => format!("exit code of {exec} is {code}"),
        }
    }
}

/// `12.500s`: how reports print a simulated time.
pub fn seconds(at: Duration) -> String {
    format!("{:.3}s", at.as_secs_f64())
}

/// Reads and checks the scenario at `path`.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut scenario = parse(&path.display().to_string(), &text)?;
    scenario.dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(scenario)
}

/// Checks a scenario's text; `path` names it in errors.
pub fn parse(path: &str, text: &str) -> Result<Scenario, ScenarioError> {
    let at = |span: std::ops::Range<usize>, key: &str, message: String| {
        let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
        ScenarioError::Invalid {
            path: path.to_string(),
            line,
            key: key.to_string(),
            message,
        }
    };
    let file: File = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let line = text[..span.start.min(text.len())].matches('\n').count();
        let key = key_on_line(text.lines().nth(line).unwrap_or(""));
        at(span, &key, e.message().trim().to_string())
    })?;
    Checker { file: &file, at }.check()
}

/// The key a line sets (`key = …`) or the table it opens (`[[node]]`).
fn key_on_line(line: &str) -> String {
    let line = line.trim();
    match line.split_once('=') {
        Some((key, _)) => key.trim().to_string(),
        None => line.trim_matches(['[', ']']).to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: String,
    #[serde(default = "default_seed")]
    seed: u64,
    duration: Spanned<Time>,
    #[serde(default)]
    link: Link,
    #[serde(default)]
    site: Vec<SiteEntry>,
    node: Vec<NodeEntry>,
    #[serde(default)]
    app: Vec<AppEntry>,
    #[serde(default)]
    event: Vec<Spanned<EventEntry>>,
    #[serde(default)]
    check: Vec<Spanned<CheckEntry>>,
}

fn default_seed() -> u64 {
    7
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteEntry {
    name: Spanned<String>,
    nat: Spanned<String>,
    preserve_port: Option<bool>,
    #[serde(default, deserialize_with = "optional_duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    hairpin: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeEntry {
    name: Spanned<String>,
    site: Option<Spanned<String>>,
    rendezvous: Option<Spanned<Vec<String>>>,
    count: Option<Spanned<usize>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    name: Spanned<String>,
    kind: Spanned<String>,
    from: Spanned<Names>,
    to: Spanned<Names>,
    port: Option<u16>,
    #[serde(default, deserialize_with = "duration")]
    start: Duration,
    #[serde(default, deserialize_with = "size")]
    bytes: u64,
    requests: Option<u64>,
    rate: Option<f64>,
}

/// One name or a list of them.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    fn list(&self) -> Vec<String> {
        match self {
            Names::One(name) => vec![name.clone()],
            Names::Many(names) => names.clone(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventEntry {
    at: Spanned<Time>,
    partition: Option<PartitionEntry>,
    heal: Option<bool>,
    link: Option<Link>,
    /// Whose uplink a `link` event changes (none: every host's).
    host: Option<String>,
    crash: Option<String>,
    restart: Option<String>,
    rebind: Option<String>,
    clock_step: Option<ClockStepEntry>,
    exec: Option<ExecEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecEntry {
    node: String,
    name: String,
    command: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartitionEntry {
    a: Names,
    b: Names,
    #[serde(default)]
    one_way: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockStepEntry {
    node: String,
    seconds: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckEntry {
    delivered: Option<String>,
    path: Option<PathEntry>,
    reconnected: Option<ReconnectedEntry>,
    latency: Option<LatencyEntry>,
    kept_address: Option<String>,
    exit_code: Option<ExitCodeEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitCodeEntry {
    exec: String,
    is: i32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathEntry {
    from: String,
    to: String,
    is: String,
    #[serde(deserialize_with = "duration")]
    at: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReconnectedEntry {
    app: String,
    #[serde(deserialize_with = "duration")]
    within: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyEntry {
    app: String,
    #[serde(default, deserialize_with = "optional_duration")]
    p50: Option<Duration>,
    #[serde(default, deserialize_with = "optional_duration")]
    p99: Option<Duration>,
}

/// The longest run a scenario may ask for (simulated time is cheap, but not free).
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Apps' first port: above tern's own.
const FIRST_APP_PORT: u16 = 5000;

struct Checker<'a, F> {
    file: &'a File,
    at: F,
}

impl<F: Fn(std::ops::Range<usize>, &str, String) -> ScenarioError> Checker<'_, F> {
    fn check(&self) -> Result<Scenario, ScenarioError> {
        let file = self.file;
        if self.duration() > MAX_DURATION {
            let most = format!("a run takes at most {}", seconds(MAX_DURATION));
            return Err(self.fail(&file.duration, "duration", most));
        }
        let mut sites = Vec::new();
        for entry in &file.site {
            self.fresh(&entry.name, sites.iter().map(|s: &Site| &s.name), "site")?;
            let nat = match entry.nat.get_ref().as_str() {
                "full-cone" => NatKind::FullCone,
                "home-router" => NatKind::HomeRouter,
                "carrier-grade" => NatKind::CarrierGrade,
                "symmetric" => NatKind::Symmetric,
                "udp-blocked" => NatKind::UdpBlocked,
                other => {
                    return Err(self.fail(
                        &entry.nat,
                        "nat",
                        format!(
                            "unknown NAT kind {other:?}: use full-cone, home-router, \
                             carrier-grade, symmetric or udp-blocked"
                        ),
                    ));
                }
            };
            sites.push(Site {
                name: entry.name.get_ref().clone(),
                nat,
                preserve_port: entry.preserve_port,
                timeout: entry.timeout,
                hairpin: entry.hairpin,
            });
        }
        let mut nodes: Vec<Node> = Vec::new();
        for entry in &file.node {
            let name = entry.name.get_ref();
            self.name_ok(&entry.name, "name")?;
            if let Some(count) = &entry.count
                && *count.get_ref() == 0
            {
                return Err(self.fail(count, "count", "a group needs at least one node".into()));
            }
            let members = Node {
                name: name.clone(),
                site: None,
                rendezvous: Vec::new(),
                count: entry.count.as_ref().map(|c| *c.get_ref()),
            }
            .members();
            let known: Vec<String> = nodes.iter().flat_map(|n| n.members()).collect();
            if let Some(clash) = members
                .iter()
                .find(|m| known.contains(m) || nodes.iter().any(|n| &n.name == *m))
            {
                return Err(self.fail(
                    &entry.name,
                    "name",
                    format!("a node named {clash:?} is already defined"),
                ));
            }
            let site = match &entry.site {
                None => None,
                Some(site) => Some(
                    sites
                        .iter()
                        .position(|s| &s.name == site.get_ref())
                        .ok_or_else(|| {
                            self.fail(
                                site,
                                "site",
                                format!("no [[site]] is named {:?}", site.get_ref()),
                            )
                        })?,
                ),
            };
            let mut rendezvous = Vec::new();
            let servers = entry
                .rendezvous
                .iter()
                .flat_map(|list| list.get_ref().iter().map(move |server| (list, server)));
            for (list, server) in servers {
                let index = nodes
                    .iter()
                    .position(|n| &n.name == server && n.count.is_none())
                    .ok_or_else(|| {
                        self.fail(
                            list,
                            "rendezvous",
                            format!(
                                "{server:?} is not a single node defined above this one (a \
                                 rendezvous must come first)"
                            ),
                        )
                    })?;
                rendezvous.push(index);
            }
            nodes.push(Node {
                name: name.clone(),
                site,
                rendezvous,
                count: entry.count.as_ref().map(|c| *c.get_ref()),
            });
        }
        let node_names: Vec<String> = nodes.iter().flat_map(|n| n.members()).collect();
        let groups: BTreeMap<String, Vec<String>> = nodes
            .iter()
            .map(|n| (n.name.clone(), n.members()))
            .collect();
        let expand = |names: &[String]| -> Result<Vec<String>, String> {
            let mut out = Vec::new();
            for name in names {
                match groups.get(name) {
                    Some(members) => out.extend(members.iter().cloned()),
                    None if node_names.contains(name) => out.push(name.clone()),
                    None => return Err(format!("no node or group is named {name:?}")),
                }
            }
            // A group and one of its members name that member once.
            let mut seen = std::collections::BTreeSet::new();
            out.retain(|name| seen.insert(name.clone()));
            Ok(out)
        };

        let mut apps: Vec<App> = Vec::new();
        for (index, entry) in file.app.iter().enumerate() {
            self.fresh(&entry.name, apps.iter().map(|a| &a.name), "app")?;
            let kind = match entry.kind.get_ref().as_str() {
                "bulk" => AppKind::Bulk,
                "rpc" => AppKind::Rpc,
                "mcp" => AppKind::Mcp,
                "ping" => AppKind::Ping,
                other => {
                    return Err(self.fail(
                        &entry.kind,
                        "kind",
                        format!("unknown app kind {other:?}: use bulk, rpc, mcp or ping"),
                    ));
                }
            };
            let from = expand(&entry.from.get_ref().list())
                .map_err(|m| self.fail(&entry.from, "from", m))?;
            let to =
                expand(&entry.to.get_ref().list()).map_err(|m| self.fail(&entry.to, "to", m))?;
            if kind != AppKind::Ping && (from.len() != 1 || to.len() != 1) {
                return Err(self.fail(
                    &entry.from,
                    "from",
                    "a bulk, rpc or mcp app runs between one node and one other".into(),
                ));
            }
            if kind == AppKind::Bulk && entry.bytes == 0 {
                return Err(self.fail(&entry.kind, "bytes", "a bulk app needs bytes > 0".into()));
            }
            if let Some(rate) = entry.rate
                && !(0.001..=10_000.0).contains(&rate)
            {
                return Err(self.fail(
                    &entry.kind,
                    "rate",
                    "rate must be 0.001 to 10000 requests a second".into(),
                ));
            }
            if entry.requests == Some(0) {
                return Err(self.fail(&entry.kind, "requests", "an app needs requests > 0".into()));
            }
            if kind == AppKind::Ping && from.iter().all(|a| to.iter().all(|b| a == b)) {
                return Err(self.fail(
                    &entry.to,
                    "to",
                    "a ping app needs a node in `to` other than the one pinging".into(),
                ));
            }
            let port = entry.port.unwrap_or(FIRST_APP_PORT + index as u16);
            if port < 1024 {
                return Err(self.fail(
                    &entry.kind,
                    "port",
                    format!("port {port} is tern's own: apps use 1024-65535"),
                ));
            }
            // Apps that serve hold their port on their `to` node: one app a port there.
            if kind != AppKind::Ping
                && let Some(other) = apps
                    .iter()
                    .find(|a| a.kind != AppKind::Ping && a.to == to && a.port == port)
            {
                return Err(self.fail(
                    &entry.kind,
                    "port",
                    format!(
                        "app {:?} already serves port {port} on {}",
                        other.name, to[0]
                    ),
                ));
            }
            self.within(entry.start, &entry.name, "start")?;
            apps.push(App {
                name: entry.name.get_ref().clone(),
                kind,
                from,
                to,
                port,
                start: entry.start,
                bytes: entry.bytes,
                requests: entry.requests.unwrap_or(20),
                rate: entry.rate.unwrap_or(5.0),
            });
        }

        let one_node = |name: &str| -> Result<String, String> {
            match node_names.iter().any(|n| n == name) {
                true => Ok(name.to_string()),
                false => Err(format!("no node is named {name:?}")),
            }
        };
        let mut events = Vec::new();
        let mut execs: Vec<String> = Vec::new();
        for spanned in &file.event {
            let entry = spanned.get_ref();
            let fail = |m: String| self.fail(spanned, "event", m);
            let at = entry.at.get_ref().0;
            self.within(at, &entry.at, "at")?;
            let mut actions = Vec::new();
            if let Some(p) = &entry.partition {
                actions.push(Action::Partition {
                    a: expand(&p.a.list()).map_err(fail)?,
                    b: expand(&p.b.list()).map_err(fail)?,
                    one_way: p.one_way,
                });
            }
            if entry.heal == Some(true) {
                actions.push(Action::Heal);
            }
            if let Some(link) = entry.link {
                let host = entry
                    .host
                    .as_deref()
                    .map(one_node)
                    .transpose()
                    .map_err(fail)?;
                actions.push(Action::Link { host, link });
            }
            if let Some(node) = &entry.crash {
                actions.push(Action::Crash(one_node(node).map_err(fail)?));
            }
            if let Some(node) = &entry.restart {
                actions.push(Action::Restart(one_node(node).map_err(fail)?));
            }
            if let Some(site) = &entry.rebind {
                if !sites.iter().any(|s| &s.name == site) {
                    return Err(fail(format!("no [[site]] is named {site:?}")));
                }
                actions.push(Action::Rebind(site.clone()));
            }
            if let Some(step) = &entry.clock_step {
                actions.push(Action::ClockStep {
                    node: one_node(&step.node).map_err(fail)?,
                    seconds: step.seconds,
                });
            }
            if let Some(exec) = &entry.exec {
                if exec.command.is_empty() {
                    return Err(fail(
                        "an exec step needs a command: [\"program\", \"arg\", …]".into(),
                    ));
                }
                if execs.contains(&exec.name) {
                    return Err(fail(format!(
                        "an exec step named {:?} is already defined",
                        exec.name
                    )));
                }
                execs.push(exec.name.clone());
                actions.push(Action::Exec {
                    node: one_node(&exec.node).map_err(fail)?,
                    name: exec.name.clone(),
                    command: exec.command.clone(),
                });
            }
            if actions.len() != 1 {
                return Err(fail(
                    "an event does exactly one of partition, heal = true, link, crash, restart, \
                     rebind, clock_step, exec"
                        .into(),
                ));
            }
            events.push(Event {
                at,
                action: actions.remove(0),
            });
        }
        events.sort_by_key(|e| e.at);

        let app_named = |name: &str| -> Result<String, String> {
            match apps.iter().any(|a| a.name == name) {
                true => Ok(name.to_string()),
                false => Err(format!("no [[app]] is named {name:?}")),
            }
        };
        let mut checks = Vec::new();
        for spanned in &file.check {
            let entry = spanned.get_ref();
            let fail = |m: String| self.fail(spanned, "check", m);
            let mut found = Vec::new();
            if let Some(app) = &entry.delivered {
                found.push(Check::Delivered(app_named(app).map_err(fail)?));
            }
            if let Some(p) = &entry.path {
                if p.is != "direct" && p.is != "relay" {
                    return Err(fail(format!(
                        "path is {:?}: use \"direct\" or \"relay\"",
                        p.is
                    )));
                }
                self.within(p.at, spanned, "at")?;
                found.push(Check::Path {
                    from: one_node(&p.from).map_err(fail)?,
                    to: one_node(&p.to).map_err(fail)?,
                    path: p.is.clone(),
                    at: p.at,
                });
            }
            if let Some(r) = &entry.reconnected {
                found.push(Check::Reconnected {
                    app: app_named(&r.app).map_err(fail)?,
                    within: r.within,
                });
            }
            if let Some(l) = &entry.latency {
                let app = app_named(&l.app).map_err(fail)?;
                let bounds = [(0.5, l.p50), (0.99, l.p99)];
                let mut any = false;
                for (quantile, max) in bounds {
                    if let Some(max) = max {
                        any = true;
                        found.push(Check::Latency {
                            app: app.clone(),
                            quantile,
                            max,
                        });
                    }
                }
                if !any {
                    return Err(fail("a latency check needs p50 or p99".into()));
                }
            }
            if let Some(node) = &entry.kept_address {
                found.push(Check::KeptAddress(one_node(node).map_err(fail)?));
            }
            if let Some(exit) = &entry.exit_code {
                if !execs.contains(&exit.exec) {
                    return Err(fail(format!("no exec step is named {:?}", exit.exec)));
                }
                found.push(Check::ExitCode {
                    exec: exit.exec.clone(),
                    code: exit.is,
                });
            }
            if found.is_empty() || (found.len() > 1 && entry.latency.is_none()) {
                return Err(fail(
                    "a check is exactly one of delivered, path, reconnected, latency, \
                     kept_address, exit_code"
                        .into(),
                ));
            }
            checks.extend(found);
        }
        if checks.is_empty() {
            return Err((self.at)(
                0..0,
                "check",
                "a scenario needs at least one [[check]]".into(),
            ));
        }
        Ok(Scenario {
            name: file.name.clone(),
            dir: PathBuf::from("."),
            seed: file.seed,
            duration: self.duration(),
            link: file.link,
            sites,
            nodes,
            apps,
            events,
            checks,
        })
    }

    fn duration(&self) -> Duration {
        self.file.duration.get_ref().0
    }

    fn fail<T>(&self, spanned: &Spanned<T>, key: &str, message: String) -> ScenarioError {
        (self.at)(spanned.span(), key, message)
    }

    fn name_ok(&self, name: &Spanned<String>, key: &str) -> Result<(), ScenarioError> {
        match name.get_ref().parse::<tern_proto::Name>() {
            Ok(_) => Ok(()),
            Err(e) => Err(self.fail(name, key, format!("{e}"))),
        }
    }

    fn fresh<'n>(
        &self,
        name: &Spanned<String>,
        mut taken: impl Iterator<Item = &'n String>,
        table: &str,
    ) -> Result<(), ScenarioError> {
        match taken.any(|t| t == name.get_ref()) {
            true => Err(self.fail(
                name,
                "name",
                format!(
                    "a [[{table}]] named {:?} is already defined",
                    name.get_ref()
                ),
            )),
            false => Ok(()),
        }
    }

    fn within<T>(
        &self,
        at: Duration,
        spanned: &Spanned<T>,
        key: &str,
    ) -> Result<(), ScenarioError> {
        match at <= self.duration() {
            true => Ok(()),
            false => Err(self.fail(
                spanned,
                key,
                format!(
                    "{} is past the scenario's duration ({})",
                    seconds(at),
                    seconds(self.duration())
                ),
            )),
        }
    }
}

/// A duration whose place in the file is kept (`Spanned<Time>`).
struct Time(Duration);

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        duration(d).map(Time)
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration: write a number and a unit, as in 250ms, 10s, 2m or 1h"
        ))
    })
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(number * scale).ok()
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(text) => parse_size(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a size: write bytes, or a number and a unit, as in 64KiB or 10MiB"
            ))
        }),
    }
}

fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        _ => return None,
    };
    number.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "two nodes"
duration = "60s"
[[node]]
name = "rv"
[[node]]
name = "alice"
rendezvous = ["rv"]
[[node]]
name = "bob"
rendezvous = ["rv"]
[[app]]
name = "bulk"
kind = "bulk"
from = "alice"
to = "bob"
bytes = "1MiB"
[[event]]
at = "2s"
partition = { a = "alice", b = "bob" }
[[check]]
delivered = "bulk"
"#;

    fn error(text: &str) -> String {
        parse("s.toml", text).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_is_read_with_its_defaults() {
        let scenario = parse("s.toml", GOOD).unwrap();
        assert_eq!(scenario.seed, 7);
        assert_eq!(scenario.duration, Duration::from_secs(60));
        assert_eq!(scenario.apps[0].bytes, 1 << 20);
        assert_eq!(scenario.apps[0].port, FIRST_APP_PORT);
        assert!(matches!(
            scenario.events[0].action,
            Action::Partition { .. }
        ));
    }

    #[test]
    fn a_wrong_file_names_the_file_line_and_key() {
        let typo = GOOD.replace("bytes = \"1MiB\"", "bytez = \"1MiB\"");
        let e = error(&typo);
        assert!(e.starts_with("s.toml:17: `bytez`:"), "{e}");
        let unknown = GOOD.replace("to = \"bob\"", "to = \"carol\"");
        let e = error(&unknown);
        assert!(
            e.starts_with("s.toml:16: `to`:") && e.contains("carol"),
            "{e}"
        );
        let late = GOOD.replace("at = \"2s\"", "at = \"90s\"");
        let e = error(&late);
        assert!(
            e.starts_with("s.toml:19: `at`:") && e.contains("duration"),
            "{e}"
        );
        let bad = GOOD.replace("duration = \"60s\"", "duration = \"soon\"");
        let e = error(&bad);
        assert!(
            e.starts_with("s.toml:3: `duration`:") && e.contains("250ms"),
            "{e}"
        );
        let two = GOOD.replace(
            "delivered = \"bulk\"",
            "delivered = \"bulk\"\nkept_address = \"bob\"",
        );
        assert!(error(&two).contains("exactly one"));
    }

    #[test]
    fn durations_and_sizes_take_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("3 parsecs"), None);
    }

    #[test]
    fn groups_expand_to_their_nodes() {
        let mesh = r#"
name = "mesh"
duration = "60s"
[[node]]
name = "rv"
[[node]]
name = "peer"
count = 3
rendezvous = ["rv"]
[[app]]
name = "all"
kind = "ping"
from = "peer"
to = "peer"
[[check]]
delivered = "all"
"#;
        let scenario = parse("m.toml", mesh).unwrap();
        assert_eq!(scenario.apps[0].from, ["peer-1", "peer-2", "peer-3"]);
    }

    #[test]
    fn an_exec_step_and_its_exit_code_check_go_together() {
        let exec = GOOD.replace(
            "partition = { a = \"alice\", b = \"bob\" }",
            "exec = { node = \"alice\", name = \"agent\", command = [\"python3\", \"agent.py\"] }",
        );
        let with_check = exec.replace(
            "delivered = \"bulk\"",
            "exit_code = { exec = \"agent\", is = 0 }",
        );
        let scenario = parse("s.toml", &with_check).unwrap();
        assert!(
            matches!(&scenario.events[0].action, Action::Exec { command, .. } if command[0] == "python3")
        );
        let unknown = with_check.replace("exec = \"agent\"", "exec = \"other\"");
        assert!(error(&unknown).contains("no exec step is named \"other\""));
    }

    #[test]
    fn apps_that_could_not_work_are_refused() {
        let low = GOOD.replace("bytes = \"1MiB\"", "bytes = \"1MiB\"\nport = 7");
        assert!(error(&low).contains("tern's own"), "{}", error(&low));
        let twice = GOOD.replace(
            "[[event]]",
            "[[app]]\nname = \"again\"\nkind = \"rpc\"\nfrom = \"alice\"\nto = \"bob\"\nport = 5000\n\n[[event]]",
        );
        assert!(
            error(&twice).contains("already serves port 5000"),
            "{}",
            error(&twice)
        );
        let none = GOOD.replace("bytes = \"1MiB\"", "bytes = \"1MiB\"\nrequests = 0");
        assert!(error(&none).contains("requests > 0"), "{}", error(&none));
        let long = GOOD.replace("duration = \"60s\"", "duration = \"9999h\"");
        assert!(
            error(&long).starts_with("s.toml:3: `duration`:"),
            "{}",
            error(&long)
        );
    }
}
