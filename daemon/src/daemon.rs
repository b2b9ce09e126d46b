//! The `ternd` node: a [`Node`] plus everything a daemon adds around it — its home, the trust
//! list and trust requests, the rendezvous registry it serves, registration with its
//! configured rendezvous servers, finding peers by address or name, and the built-in echo
//! service.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::record::{MAX_ENDPOINTS, Record};
use tern_proto::trust_request::TRUST_REQUEST_PORT;
use tern_proto::{Address, Name, TargetError};
use tokio::io::AsyncWriteExt;

use crate::TransportConfig;
use crate::env::{BoundUdp, Env, EnvExt};
use crate::home::{Home, HomeError};
use crate::names::{NAMES_FILE, NameBook, PinMismatch};
use crate::node::{
    Access, Datagram, DatagramError, DialError, Listener, Node, NodeError, OverlayStream,
    ProbeError,
};
use crate::rendezvous::registration::{REFRESH_INTERVAL, Registered, Registration, Step};
use crate::rendezvous::{
    self, RECORD_LIFETIME, RateLimiter, RegisterError, Registry, RendezvousError,
};
use crate::servers::{KeyCheck, SERVERS_FILE, ServerPins, ServerSpec, SpecError};
use crate::store::{JsonFile, StoreError};
use crate::streams::StreamTable;
use crate::transport::paths::{canonical, is_link};
use crate::traversal::race::{self, Connected, PUNCH_HEAD_START, Race};
use crate::traversal::{self, Path};
use crate::trust::{TRUST_FILE, TrustList};
use crate::trust_requests::{self, REQUESTS_FILE, RequestBook, SendError};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The UDP port `ternd` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7440;
/// Virtual port of the built-in echo service (`ternctl ping`, `ternctl bench`).
pub const ECHO_PORT: u16 = 7;
/// Ports below this are tern's own; applications cannot listen on them.
pub const FIRST_APP_PORT: u16 = 1024;
/// The rendezvous records this node holds, kept across restarts.
pub const RECORDS_FILE: &str = "rendezvous.records";
/// Control counters and record seqs start from the wall clock, yet must never repeat when it
/// steps back: the home keeps a floor a block ahead of the counter, raised before it is used up.
pub const COUNTER_FILE: &str = "counter.json";
/// A block of 2^24: far more than a minute's control packets (probes are budgeted at 2000 a
/// second; seqs are drawn every minute), and small enough that a node restarting in a loop
/// runs at most 17 s of the clock ahead per restart.
const COUNTER_BLOCK: u64 = 1 << 24;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct CounterFloor {
    floor: u64,
}

/// How long a STUN request to the rendezvous may take before registering without it.
const STUN_WAIT: Duration = Duration::from_secs(1);
/// How long a rendezvous gets to answer over UDP before it is tried over TCP.
const UDP_FIRST: Duration = Duration::from_secs(3);
/// How often changed records are written out (a crash loses at most this much).
const PERSIST_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub home: Home,
    pub listen: SocketAddr,
    /// `HOST:PORT` of each rendezvous; empty: this node is its own.
    pub rendezvous: Vec<String>,
    /// The name to claim (`--hostname`); None keeps the name saved in the home, if any.
    pub hostname: Option<Name>,
    /// How long a name stays held after its holder's record lapsed (this node as rendezvous).
    pub name_grace: Duration,
    pub transport: TransportConfig,
    /// Local API clients connected at once; more wait.
    pub max_api_clients: usize,
}

impl DaemonConfig {
    /// The defaults `ternd` uses, for a node in `home` on `listen`.
    pub fn new(home: Home, listen: SocketAddr, rendezvous: Vec<String>) -> Self {
        Self {
            home,
            listen,
            rendezvous,
            hostname: None,
            name_grace: Duration::from_secs(rendezvous::registry::DEFAULT_NAME_GRACE),
            transport: TransportConfig::default(),
            max_api_clients: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on UDP {addr}: {source}. Pick another --listen address or port")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Server(#[from] SpecError),
    #[error(
        "no record of {0} at this node or its rendezvous servers: is that node running and \
         registered with the same rendezvous?"
    )]
    NotFound(Address),
    #[error("could not reach {peer}: {detail}")]
    Unreachable { peer: Address, detail: String },
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Datagram(#[from] DatagramError),
    #[error("port {0} is reserved for tern's own services (0-1023); use 1024-65535")]
    ReservedPort(u16),
    #[error("port {0} is already in use on this node")]
    PortInUse(u16),
    #[error("this client does not listen on port {0}: send `listen` first, on another connection")]
    NotListening(u16),
    #[error(transparent)]
    BadTarget(#[from] TargetError),
    #[error(
        "no node holds the name {0} at this node or its rendezvous servers: check the spelling, \
         that the node runs with --hostname {0}, and that both use the same rendezvous"
    )]
    NameNotFound(Name),
    #[error("cannot look the name {0} up: {1}")]
    NameUnresolved(Name, String),
    #[error(transparent)]
    Pinned(#[from] PinMismatch),
    #[error(
        "the name {name} is held by {holder} at {server}: names go to the first key that claims \
         them; pick another name"
    )]
    NameTaken {
        name: Name,
        holder: Address,
        server: String,
    },
    #[error("no alias {0}; `ternctl alias list` shows them")]
    NoAlias(Name),
    #[error(
        "no pending trust request from {0}; `ternctl trust pending` lists them (to trust a node \
         that did not ask: `ternctl trust add`)"
    )]
    NoPendingRequest(Address),
    #[error("trust request to {peer} not delivered: {source}")]
    TrustRequest { peer: Address, source: SendError },
}

/// What the node knows about one configured rendezvous server.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct ServerState {
    pub(crate) server: String,
    pub(crate) address: Option<Address>,
    pub(crate) registered: bool,
    pub(crate) observed: Option<SocketAddr>,
    pub(crate) last_error: Option<String>,
    /// Why this server did not take this node's name (another key holds it), if it did not.
    pub(crate) name_refused: Option<String>,
}

pub struct Daemon {
    /// This daemon, for the tasks it starts.
    pub(crate) me: std::sync::Weak<Daemon>,
    /// Peers whose connection a path monitor watches.
    pub(crate) monitored: Mutex<std::collections::HashSet<Address>>,
    pub(crate) home: Home,
    pub(crate) node: Node,
    pub(crate) registry: Arc<Mutex<Registry>>,
    pub(crate) servers: Mutex<Vec<ServerState>>,
    pub(crate) trust: Mutex<JsonFile<TrustList>>,
    pub(crate) names: Mutex<JsonFile<NameBook>>,
    pub(crate) requests: Mutex<JsonFile<RequestBook>>,
    pub(crate) request_limiter: Mutex<RateLimiter>,
    /// Trust request messages refused (forged, stale, too many, no request of ours).
    pub(crate) trust_messages_refused: std::sync::atomic::AtomicU64,
    /// The rendezvous role's limits and refusal counts.
    pub(crate) limits: Arc<rendezvous::Limits>,
    pub(crate) listeners: Mutex<HashMap<u16, Arc<tokio::sync::Mutex<Listener>>>>,
    pub(crate) streams: Mutex<StreamTable>,
    pub(crate) records_path: std::path::PathBuf,
    /// The registry as last written to `records_path`.
    pub(crate) records_written: Mutex<Vec<u8>>,
    /// Local API clients served at once (`api::serve`).
    pub(crate) api_clients: Arc<tokio::sync::Semaphore>,
    pub(crate) counter_floor: Mutex<JsonFile<CounterFloor>>,
    pub(crate) server_pins: Mutex<JsonFile<ServerPins>>,
}

impl Daemon {
    /// Loads the identity, binds the socket and starts every service, all through `env` (the
    /// OS, or a simulation). Needs a tokio runtime.
    pub fn start(config: DaemonConfig, env: Arc<dyn Env>) -> Result<Arc<Self>, DaemonError> {
        let socket = env
            .bind_udp(config.listen, config.transport.socket_buffer_bytes)
            .map_err(|source| DaemonError::Bind {
                addr: config.listen,
                source,
            })?;
        Self::start_on(config, env, socket)
    }

    /// Like [`Daemon::start`] on a socket the caller bound (in a network namespace, say);
    /// `config.listen` is not used.
    pub fn start_on(
        config: DaemonConfig,
        env: Arc<dyn Env>,
        socket: BoundUdp,
    ) -> Result<Arc<Self>, DaemonError> {
        env.prepare_home(&config.home)?;
        let identity = env.load_or_create_identity(&config.home)?;
        let trust = JsonFile::<TrustList>::load(&env, config.home.dir().join(TRUST_FILE))?;
        let node = Node::start(identity, socket, env.clone(), config.transport)?;
        let span = node.span();
        let _in_span = span.enter();
        let mut counter_floor =
            JsonFile::<CounterFloor>::load(&env, config.home.dir().join(COUNTER_FILE))?;
        node.raise_counter(counter_floor.get().floor);
        let start = node.next_sequence();
        counter_floor.update(|c| c.floor = start + COUNTER_BLOCK)?;
        node.set_trusted(trust.get().trusted.iter().copied());
        let mut names = JsonFile::<NameBook>::load(&env, config.home.dir().join(NAMES_FILE))?;
        if let Some(hostname) = config.hostname {
            names.update(|book| book.own = Some(hostname))?;
        }
        let requests = JsonFile::<RequestBook>::load(&env, config.home.dir().join(REQUESTS_FILE))?;
        let mut registry = Registry::new(
            rendezvous::registry::DEFAULT_CAPACITY,
            config.name_grace.as_secs(),
        );
        let records_path = config.home.dir().join(RECORDS_FILE);
        if let Ok(bytes) = env.read_file(&records_path) {
            let (loaded, skipped) = registry.load_file(node.unix_now(), &bytes);
            tracing::info!(loaded, skipped, file = %records_path.display(), "rendezvous records restored");
        }
        let servers = config
            .rendezvous
            .iter()
            .map(|server| {
                server.parse::<ServerSpec>()?;
                Ok(ServerState {
                    server: server.clone(),
                    address: None,
                    registered: false,
                    observed: None,
                    last_error: None,
                    name_refused: None,
                })
            })
            .collect::<Result<Vec<_>, SpecError>>()?;
        let server_pins = JsonFile::load(&env, config.home.dir().join(SERVERS_FILE))?;
        let daemon = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            monitored: Mutex::new(Default::default()),
            home: config.home,
            node: node.clone(),
            registry: Arc::new(Mutex::new(registry)),
            servers: Mutex::new(servers),
            trust: Mutex::new(trust),
            names: Mutex::new(names),
            requests: Mutex::new(requests),
            records_path,
            records_written: Mutex::new(Vec::new()),
            api_clients: Arc::new(tokio::sync::Semaphore::new(config.max_api_clients)),
            counter_floor: Mutex::new(counter_floor),
            server_pins: Mutex::new(server_pins),
            trust_messages_refused: Default::default(),
            limits: Arc::default(),
            request_limiter: Mutex::new(RateLimiter::new(
                trust_requests::REQUESTS_PER_SECOND,
                trust_requests::REQUEST_BURST,
            )),
            listeners: Mutex::new(HashMap::new()),
            streams: Mutex::new(StreamTable::default()),
        });
        let claimed = Arc::new(tokio::sync::Notify::new());
        let me = Arc::downgrade(&daemon);
        node.spawn(rendezvous::serve(Arc::new(rendezvous::Service {
            node: node.clone(),
            registry: daemon.registry.clone(),
            limits: daemon.limits.clone(),
            claimed: claimed.clone(),
            is_own_server: Box::new(move |peer| {
                me.upgrade().is_some_and(|d| d.is_own_server(peer))
            }),
        })));
        let echo = node
            .listen(ECHO_PORT, Access::Open)
            .expect("a fresh node has no listener on the echo port");
        node.spawn(serve_echo(node.clone(), echo));
        let trust_requests = node
            .listen(TRUST_REQUEST_PORT, Access::Open)
            .expect("a fresh node has no listener on the trust request port");
        node.spawn(crate::trust_requests::serve(
            Arc::downgrade(&daemon),
            trust_requests,
        ));
        node.spawn(crate::trust_requests::retell(Arc::downgrade(&daemon)));
        node.spawn(refresh_own_record(Arc::downgrade(&daemon)));
        node.spawn(persist_records(Arc::downgrade(&daemon), claimed));
        node.spawn(report_limits(Arc::downgrade(&daemon)));
        for index in 0..config.rendezvous.len() {
            let seed = env.random_u64();
            node.spawn(keep_registered(Arc::downgrade(&daemon), index, seed));
        }
        Ok(daemon)
    }

    /// Serves the local API on `listener` (`env::os::bind_local_api`), as one of the node's tasks.
    pub fn serve_api(&self, listener: tokio::net::UnixListener) {
        self.node
            .spawn(crate::api::serve(self.me.clone(), listener));
    }

    /// Stops the node: saves the records, tells peers, and stops every task, so that its
    /// socket, TCP listener and local API are free and a node with the same home can start
    /// in this process.
    pub async fn stop(&self) {
        self.save_records();
        self.node.stop().await;
    }

    /// Writes the registry to the home if it changed (atomically: temp file, rename).
    pub fn save_records(&self) {
        let now = self
            .registry
            .lock()
            .expect("registry lock")
            .to_file(self.node.unix_now());
        let mut written = self.records_written.lock().expect("records lock");
        if *written == now {
            return;
        }
        match self.node.env().write_file(&self.records_path, &now) {
            Ok(()) => *written = now,
            Err(e) => {
                tracing::warn!(file = %self.records_path.display(), error = %e, "cannot save rendezvous records")
            }
        }
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The table of spliced streams (local API `reset` / `outcome`).
    pub fn streams(&self) -> std::sync::MutexGuard<'_, StreamTable> {
        self.streams.lock().expect("stream table lock")
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Where peers can reach this node: its specific listen address or, when it listens on
    /// all interfaces, each interface's address; plus what each rendezvous observed.
    fn endpoints(&self) -> Vec<SocketAddr> {
        let local = self.node.local_addr();
        let mut endpoints = if local.ip().is_unspecified() {
            self.node
                .env()
                .interface_addresses()
                .into_iter()
                .filter(|ip| ip.is_ipv4() == local.is_ipv4() || local.is_ipv6())
                .map(|ip| SocketAddr::new(ip, local.port()))
                .collect()
        } else {
            vec![local]
        };
        let servers = self.servers.lock().expect("server state lock");
        for observed in servers.iter().filter_map(|s| s.observed) {
            if !endpoints.contains(&observed) {
                endpoints.insert(0, observed);
            }
        }
        endpoints.truncate(MAX_ENDPOINTS);
        endpoints
    }

    /// Raises the counter past a seq a rendezvous holds for this node, unless that seq is
    /// absurdly far ahead (a hostile server must not exhaust the counter); true if raised.
    fn move_seq_past(&self, stored: u64) -> bool {
        const MAX_AHEAD_MICROS: u64 = 10 * 365 * 24 * 3600 * 1_000_000;
        let now = self.node.unix_now().saturating_mul(1_000_000);
        if stored >= now.saturating_add(MAX_AHEAD_MICROS) {
            tracing::warn!(
                stored,
                "a rendezvous holds a seq of this node's over ten years ahead; not following it"
            );
            return false;
        }
        tracing::info!(
            stored,
            "a newer record of this node was stored before; moving past its seq"
        );
        self.node.raise_counter(stored.saturating_add(1));
        true
    }

    /// A seq larger than every seq and control counter this node used, across restarts.
    fn next_seq(&self) -> u64 {
        let seq = self.node.next_sequence();
        let mut kept = self.counter_floor.lock().expect("counter floor lock");
        if seq + COUNTER_BLOCK / 2 > kept.get().floor
            && let Err(e) = kept.update(|c| c.floor = seq + COUNTER_BLOCK)
        {
            tracing::warn!(error = %e, "counter floor not saved: a clock stepped back before the next start could make old counters repeat");
        }
        seq
    }

    /// This node's signed record, claiming its name if `with_name`.
    pub(crate) fn own_record(&self, with_name: bool) -> Record {
        let seq = self.next_seq();
        let expires = self.node.unix_now() + RECORD_LIFETIME.as_secs();
        let name = self.own_name().filter(|_| with_name);
        Record::sign(
            self.node.secret_identity(),
            &self.endpoints(),
            name.as_ref(),
            seq,
            expires,
        )
        .expect("endpoints are truncated to the record's maximum")
    }

    /// Whether `peer` is one of the rendezvous servers this node registers with.
    pub(crate) fn is_own_server(&self, peer: Address) -> bool {
        let servers = self.servers.lock().expect("server state lock");
        servers.iter().any(|s| s.address == Some(peer))
    }

    /// Whether this node's own registry is among the rendezvous it resolves through: only
    /// when it is its own rendezvous. Anyone may register at any ternd, so otherwise its
    /// registry answers the peers that use it, never this node's own look-ups.
    pub(crate) fn resolves_through_own_registry(&self) -> bool {
        let servers = self.servers.lock().expect("server state lock");
        servers.is_empty()
            || servers
                .iter()
                .any(|s| s.address == Some(self.node.address()))
    }

    pub fn own_name(&self) -> Option<Name> {
        self.names.lock().expect("names lock").get().own.clone()
    }

    /// `target`'s record, from this node's registry or one of its rendezvous servers (which
    /// is returned too: it can introduce us).
    pub(crate) async fn find(
        &self,
        target: Address,
    ) -> Result<(Record, Option<Address>), DaemonError> {
        if self.resolves_through_own_registry()
            && let Some(record) = self
                .registry
                .lock()
                .expect("registry lock")
                .lookup(self.node.unix_now(), target)
        {
            return Ok((record.clone(), None));
        }
        match self
            .ask_servers(|server| rendezvous::lookup(&self.node, server, target))
            .await
        {
            Ok(Some((record, server))) => Ok((record, Some(server))),
            Ok(None) => Err(DaemonError::NotFound(target)),
            Err(detail) => Err(DaemonError::Unreachable {
                peer: target,
                detail,
            }),
        }
    }

    /// Asks each rendezvous in turn until one has the record; `Err` lists why the ones that
    /// could not answer did not.
    pub(crate) async fn ask_servers<F, Fut>(
        &self,
        lookup: F,
    ) -> Result<Option<(Record, Address)>, String>
    where
        F: Fn(Address) -> Fut,
        Fut: Future<Output = Result<Option<Record>, RendezvousError>>,
    {
        let servers: Vec<(String, Option<Address>)> = self
            .servers
            .lock()
            .expect("server state lock")
            .iter()
            .map(|s| (s.server.clone(), s.address))
            .collect();
        let mut errors = Vec::new();
        for (spec, known) in servers {
            // Not reached yet (the node just started, say): connect now rather than miss it.
            let server = match known {
                Some(server) => server,
                None => match self.reach_server(&spec).await {
                    Ok(server) => server,
                    Err(e) => {
                        errors.push(format!("rendezvous {spec}: {e}"));
                        continue;
                    }
                },
            };
            match lookup(server).await {
                Ok(Some(record)) => return Ok(Some((record, server))),
                Ok(None) => {}
                Err(e) => errors.push(format!("rendezvous {spec}: {e}")),
            }
        }
        match errors.is_empty() {
            true => Ok(None),
            false => Err(errors.join("; ")),
        }
    }

    /// The address of a rendezvous given as `HOST:PORT`, connecting to it unless connected:
    /// over UDP, or when that gets no answer, over a TCP link to the same port.
    pub(crate) async fn reach_server(&self, spec: &str) -> Result<Address, String> {
        let known = self
            .servers
            .lock()
            .expect("server state lock")
            .iter()
            .find(|s| s.server == spec)
            .and_then(|s| s.address);
        if let Some(server) = known.filter(|&server| self.node.is_connected(server)) {
            return Ok(server);
        }
        let parsed = spec.parse::<ServerSpec>().map_err(|e| e.to_string())?;
        let host = &parsed.host;
        let at = self
            .node
            .env()
            .lookup_host(host.clone())
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        let over_udp = match tokio::time::timeout(UDP_FIRST, self.node.connect_any(at)).await {
            Ok(Ok(server)) => return self.reached_server(spec, &parsed, server),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer over UDP within {UDP_FIRST:?}"),
        };
        match self.node.connect_any_over_tcp(at).await {
            Ok(server) => {
                tracing::info!(server = %spec, "UDP gets no answer; reached the rendezvous over TCP");
                self.reached_server(spec, &parsed, server)
            }
            Err(e) => Err(format!("{over_udp}; over TCP: {e}")),
        }
    }

    /// Notes which node answered at a configured rendezvous, as soon as it answered: from
    /// then on it may introduce peers to this node. Unless it is not the key given or
    /// pinned for that server: then it is not used at all.
    fn reached_server(
        &self,
        spec: &str,
        parsed: &ServerSpec,
        server: Address,
    ) -> Result<Address, String> {
        {
            let mut pins = self.server_pins.lock().expect("server pins lock");
            let check = pins.get().check(parsed, server);
            if let Some(refusal) = check.refusal(parsed, server) {
                tracing::error!(server = %spec, "{refusal}");
                drop(pins);
                self.node.disconnect(server);
                return Err(refusal);
            }
            if check == KeyCheck::Pin {
                let host = parsed.host.clone();
                if let Err(e) = pins.update(|p| p.pinned.insert(host, server)) {
                    // Still used; pinned on a later connection once the home is writable.
                    tracing::warn!(server = %spec, error = %e, "the rendezvous's key is not pinned");
                }
            }
        }
        let mut servers = self.servers.lock().expect("server state lock");
        if let Some(state) = servers.iter_mut().find(|s| s.server == spec) {
            state.address = Some(server);
        }
        Ok(server)
    }

    /// A verified connection to `target`, found through the rendezvous if need be.
    ///
    /// Found through a rendezvous, the target can be punched to and relayed to at once: the
    /// rendezvous introduces us (both sides probe each other's endpoints from their one
    /// socket) while a connection through the relay is set up. The punch gets a head start of
    /// two round trips to the rendezvous; after that the first path up carries the first
    /// byte, and [`traversal::run`] moves the connection to the direct path if punching
    /// works later, and back to the relay if the direct path fails. A target in this node's
    /// own registry (we are its rendezvous) is dialled at its endpoints.
    pub async fn ensure_connected(&self, target: Address) -> Result<(), DaemonError> {
        if target == self.node.address() {
            return Err(DaemonError::Unreachable {
                peer: target,
                detail: "that is this node's own address".into(),
            });
        }
        if self.node.is_connected(target) {
            return Ok(());
        }
        let (record, via) = self.find(target).await?;
        self.node.learn(&record.identity);
        // The rendezvous that introduces us also relays, when this node reaches it directly.
        let rendezvous = via.and_then(|server| Some((server, self.node.remote_of(server)?)));
        let head_start = rendezvous
            .and_then(|(server, _)| self.node.rtt(server))
            .map_or(PUNCH_HEAD_START, |rtt| (rtt * 2).min(PUNCH_HEAD_START))
            + Duration::from_millis(20);
        let mut race = Race::new(Instant::now(), rendezvous.is_some(), head_start);
        type Leg<'a, T> =
            Option<std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>>;
        let mut punching: Leg<'_, Option<SocketAddr>> = None;
        let mut relaying: Leg<'_, Result<(), DialError>> = None;
        loop {
            while let Some(action) = race.poll_action() {
                match (action, rendezvous) {
                    (race::Action::Punch, Some((server, at))) => {
                        let introduction = self.own_record(false);
                        let punch = traversal::punch(
                            &self.node,
                            target,
                            server,
                            at,
                            &record.endpoints,
                            introduction,
                        );
                        punching = Some(Box::pin(punch));
                    }
                    (race::Action::Relay, Some((_, at))) => {
                        relaying = Some(Box::pin(self.node.connect_via_relay(target, at)));
                    }
                    // Only a race through a rendezvous punches or relays.
                    (race::Action::Punch, None) => race.handle_punched(None),
                    (race::Action::Relay, None) => {
                        race.handle_relayed(Err("no rendezvous to relay through".into()))
                    }
                    (race::Action::AbandonRelay, _) => relaying = None,
                    (race::Action::Direct(endpoint), _) => {
                        let dialled = self.node.connect(target, endpoint).await;
                        if let Err(e) = &dialled {
                            tracing::debug!(peer = %target, error = %e, "punched, yet the dial failed");
                        }
                        let dialled = dialled.map_err(|e| e.to_string());
                        race.handle_direct(endpoint, dialled, self.node.is_connected(target));
                    }
                    (race::Action::Endpoints, _) => {
                        race.handle_endpoints(self.dial_endpoints(target, &record.endpoints).await);
                    }
                }
            }
            match (race.outcome(), rendezvous) {
                (race::Outcome::Racing, _) => {}
                (race::Outcome::Connected(connected), Some((server, relay))) => {
                    let path = match *connected {
                        Connected::Direct(endpoint) => Path::Direct(endpoint),
                        Connected::Relay => {
                            tracing::info!(peer = %target, %relay, "connected through the relay; punching goes on");
                            Path::Relay
                        }
                        Connected::Plain => return Ok(()),
                    };
                    self.monitor(target, relay, server, &record, path);
                    return Ok(());
                }
                (race::Outcome::Connected(_), None) => return Ok(()),
                (race::Outcome::Failed(detail), _) => {
                    return Err(DaemonError::Unreachable {
                        peer: target,
                        detail: detail.clone(),
                    });
                }
            }
            let head_start_ends = race.poll_timeout();
            tokio::select! {
                biased;
                relayed = async { relaying.as_mut().expect("guarded").await }, if relaying.is_some() => {
                    relaying = None;
                    if let Err(e) = &relayed {
                        tracing::debug!(peer = %target, error = %e, "relay failed");
                    }
                    race.handle_relayed(relayed.map_err(|e| e.to_string()));
                }
                answered = async { punching.as_mut().expect("guarded").await }, if punching.is_some() => {
                    punching = None;
                    race.handle_punched(answered);
                }
                _ = async { tokio::time::sleep_until(head_start_ends.expect("guarded")).await }, if head_start_ends.is_some() => {
                    race.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// Plain dials to each endpoint in turn; what each failure was, if none answered.
    async fn dial_endpoints(
        &self,
        target: Address,
        endpoints: &[SocketAddr],
    ) -> Result<(), String> {
        let mut errors = Vec::new();
        for &endpoint in endpoints {
            match self.node.connect(target, endpoint).await {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(if errors.is_empty() {
            "its record lists no endpoints".into()
        } else {
            errors.join("; ")
        })
    }

    /// Starts the path monitor for the connection to `target`, unless one runs.
    fn monitor(
        &self,
        target: Address,
        relay: SocketAddr,
        server: Address,
        record: &Record,
        path: Path,
    ) {
        if !self.monitored.lock().expect("monitor lock").insert(target) {
            return;
        }
        let (me, record) = (self.me.clone(), record.clone());
        let node = self.node.clone();
        self.node.spawn(async move {
            let introduction = || me.upgrade().map(|d| d.own_record(false));
            traversal::run(node, target, relay, server, record, path, introduction).await;
            if let Some(d) = me.upgrade() {
                d.monitored.lock().expect("monitor lock").remove(&target);
            }
        });
    }

    pub async fn dial(&self, target: Address, port: u16) -> Result<OverlayStream, DaemonError> {
        self.ensure_connected(target).await?;
        Ok(self.node.open_stream(target, port).await?)
    }

    pub async fn ping(&self, target: Address) -> Result<Duration, DaemonError> {
        self.ensure_connected(target).await?;
        Ok(self.node.ping(target, None).await?)
    }

    /// Claims an application port until [`Daemon::unlisten`]; returns its datagram queue.
    pub fn listen(&self, port: u16, open: bool) -> Result<mpsc::Receiver<Datagram>, DaemonError> {
        if port < FIRST_APP_PORT {
            return Err(DaemonError::ReservedPort(port));
        }
        let access = if open { Access::Open } else { Access::Trusted };
        let mut listener = self
            .node
            .listen(port, access)
            .map_err(|_| DaemonError::PortInUse(port))?;
        let datagrams = listener
            .take_datagrams()
            .expect("a new listener still has its datagram queue");
        self.listeners
            .lock()
            .expect("listener table lock")
            .insert(port, Arc::new(tokio::sync::Mutex::new(listener)));
        Ok(datagrams)
    }

    pub async fn send_datagram(
        &self,
        target: Address,
        port: u16,
        source_port: u16,
        payload: &[u8],
    ) -> Result<(), DaemonError> {
        self.ensure_connected(target).await?;
        Ok(self
            .node
            .send_datagram(target, port, source_port, payload)?)
    }

    pub fn unlisten(&self, port: u16) {
        self.listeners
            .lock()
            .expect("listener table lock")
            .remove(&port);
    }

    /// The next stream on a listened port; `None` when the port was released meanwhile.
    pub async fn accept(&self, port: u16) -> Result<Option<OverlayStream>, DaemonError> {
        let listener = self
            .listeners
            .lock()
            .expect("listener table lock")
            .get(&port)
            .cloned()
            .ok_or(DaemonError::NotListening(port))?;
        let mut listener = listener.lock().await;
        Ok(listener.accept().await)
    }

    /// Trusts or stops trusting `peer`; applies to the node at once. False if unchanged.
    pub fn set_trust(&self, peer: Address, trusted: bool) -> Result<bool, DaemonError> {
        let mut trust = self.trust.lock().expect("trust lock");
        let changed = trust.update(|list| list.set(peer, trusted))?;
        self.node.set_trusted(trust.get().trusted.iter().copied());
        Ok(changed)
    }

    pub fn trust_list(&self) -> Vec<Address> {
        self.trust
            .lock()
            .expect("trust lock")
            .get()
            .trusted
            .iter()
            .copied()
            .collect()
    }

    /// Stores this node's record in its own registry, with its name unless another key
    /// registered here holds it.
    pub(crate) fn register_with_self(&self) -> Result<(), RegisterError> {
        let mut registry = self.registry.lock().expect("registry lock");
        let mut register =
            |with_name| match registry.register(self.node.unix_now(), self.own_record(with_name)) {
                // A record from before a clock step back, reloaded from the records file.
                Err(RegisterError::Stale { stored, .. }) if self.move_seq_past(stored) => {
                    registry.register(self.node.unix_now(), self.own_record(with_name))
                }
                other => other,
            };
        match register(true) {
            Err(RegisterError::NameTaken { .. }) => register(false),
            other => other,
        }
    }

    pub fn status(&self) -> Value {
        let servers = self.servers.lock().expect("server state lock").clone();
        let registered = if servers.is_empty() {
            true
        } else {
            servers.iter().any(|s| s.registered)
        };
        json!({
            "address": self.node.address(),
            "public_key": hex::encode(self.node.identity().key_bytes()),
            "listen": self.node.local_addr(),
            "endpoints": self.endpoints(),
            "registered": registered,
            "rendezvous": if servers.is_empty() { json!("self") } else { json!(servers) },
            "name": self.own_name(),
            "peers": self.node.peers().len(),
            "paths": self.node.paths_held(),
            // Tasks alive in the daemon's runtime: what a leak of tasks would show first.
            "tasks": tokio::runtime::Handle::try_current().ok().map(|h| h.metrics().num_alive_tasks()),
            "records_held": self.registry.lock().expect("registry lock").len(),
            "names_held": self.registry.lock().expect("registry lock").names_held(),
            "dropped": self.node.drops(),
            "limits_hit": self.node.limits_hit(),
            "refused": {
                "rendezvous_requests": self.limits.refused.load(std::sync::atomic::Ordering::Relaxed),
                "name_claims_taken": self.limits.names_taken.load(std::sync::atomic::Ordering::Relaxed),
                "trust_messages": self.trust_messages_refused.load(std::sync::atomic::Ordering::Relaxed),
            },
            "home": self.home.dir(),
        })
    }
}

/// An echo stream that moves nothing for this long is reset: the echo port is open to every
/// peer, so no peer may park streams on it.
const ECHO_IDLE: Duration = Duration::from_secs(30);

impl Drop for Daemon {
    /// Some of the node's tasks hold the node itself: stop them, or it would never go.
    fn drop(&mut self) {
        self.node.stop_tasks();
    }
}

async fn serve_echo(node: Node, mut listener: Listener) {
    while let Some(stream) = listener.accept().await {
        node.spawn(echo(stream));
    }
}

async fn echo(mut stream: OverlayStream) {
    // Small: a peer may hold many echo streams open at once.
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let n = match tokio::time::timeout(ECHO_IDLE, stream.recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => n,
            Ok(Ok(None)) => {
                let _ = stream.send.shutdown().await;
                return;
            }
            Ok(Err(_)) => return,
            Err(_) => break,
        };
        match tokio::time::timeout(ECHO_IDLE, stream.send.write_all(&buf[..n])).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return,
            Err(_) => break,
        }
    }
    let _ = stream.send.reset(0u32.into());
    let _ = stream.recv.stop(0u32.into());
}

/// Keeps this node's own record in its own registry fresh, so peers that use this node as
/// their rendezvous can find it.
async fn refresh_own_record(daemon: std::sync::Weak<Daemon>) {
    loop {
        let Some(d) = daemon.upgrade() else { return };
        if let Err(e) = d.register_with_self() {
            tracing::warn!(error = %e, "own record not stored");
        }
        drop(d);
        tokio::time::sleep(REFRESH_INTERVAL).await;
    }
}

/// How often limits that were hit are logged: one line per interval whatever peers do.
const LIMIT_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Logs, once per interval, which limits were hit and which datagrams were dropped.
async fn report_limits(daemon: std::sync::Weak<Daemon>) {
    let mut last = None;
    loop {
        tokio::time::sleep(LIMIT_REPORT_INTERVAL).await;
        let Some(d) = daemon.upgrade() else { return };
        let now = (d.node.limits_hit(), d.node.drops());
        if last.is_some_and(|last| last != now) {
            let (limits, dropped) = now;
            tracing::warn!(
                ?limits,
                ?dropped,
                "limits were hit (totals since start; `ternctl status` shows them)"
            );
        }
        last = Some(now);
    }
}

/// Saves the registry every few seconds, and at once when a name is newly claimed.
async fn persist_records(daemon: std::sync::Weak<Daemon>, claimed: Arc<tokio::sync::Notify>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERSIST_INTERVAL) => {}
            _ = claimed.notified() => {}
        }
        let Some(d) = daemon.upgrade() else { return };
        d.save_records();
    }
}

/// Registers with one rendezvous server and keeps the registration fresh: the shell of its
/// [`Registration`] machine, which decides every step and wait.
async fn keep_registered(daemon: std::sync::Weak<Daemon>, index: usize, jitter_seed: u64) {
    let mut machine = Registration::new(jitter_seed);
    let mut server = None;
    // Watch the connection for loss only after a round that registered: once lost, the
    // machine's back-off is the wait.
    let mut watch_connection = false;
    loop {
        let Some(d) = daemon.upgrade() else { return };
        let spec = d.servers.lock().expect("server state lock")[index]
            .server
            .clone();
        let before = (machine.is_registered(), machine.last_error().is_some());
        while let Some(step) = machine.poll_step() {
            match step {
                Step::Reach => {
                    let reached = d.reach_server(&spec).await;
                    server = reached.as_ref().ok().copied();
                    machine.handle_reached(Instant::now(), reached.map(|_| ()));
                }
                Step::Stun => {
                    if let Some(server) = server {
                        d.learn_reflexive(&spec, server).await;
                    }
                    machine.handle_stunned();
                }
                Step::Register { with_name } => {
                    let outcome = match server {
                        Some(server) => d.register_at(&spec, server, with_name).await,
                        None => Registered::Failed("the rendezvous is not reached".into()),
                    };
                    machine.handle_registered(Instant::now(), outcome);
                }
            }
            watch_connection = machine.is_registered();
        }
        d.note_registration(index, &machine, server, before);
        let lost = match (watch_connection, server) {
            (true, Some(server)) => Some(d.node.disconnected(server)),
            _ => None,
        };
        drop(d);
        let at = machine
            .poll_timeout()
            .expect("a registration with no step to do waits");
        match lost {
            Some(lost) => tokio::select! {
                biased;
                _ = tokio::time::sleep_until(at) => {}
                _ = lost => {
                    tracing::info!(server = %spec, "connection to the rendezvous lost; registering again");
                    watch_connection = false;
                    machine.handle_connection_lost(Instant::now());
                }
            },
            None => tokio::time::sleep_until(at).await,
        }
        machine.handle_timeout(Instant::now());
    }
}

impl Daemon {
    /// Learns this node's reflexive address by STUN to the rendezvous's UDP port, so that the
    /// record carries it; the registration's answer confirms it.
    async fn learn_reflexive(&self, spec: &str, server: Address) {
        let reflexive = match self.node.remote_of(server).filter(|at| !is_link(at)) {
            Some(at) => tokio::time::timeout(STUN_WAIT, self.node.stun(at))
                .await
                .unwrap_or(Err(ProbeError::Timeout(STUN_WAIT))),
            None => Err(ProbeError::UnknownPeer(server)),
        };
        match reflexive {
            Ok(reflexive) => {
                tracing::debug!(server = %spec, %reflexive, "reflexive address from STUN");
                self.set_observed(spec, canonical(reflexive));
            }
            Err(e) => tracing::debug!(server = %spec, error = %e, "no reflexive address from STUN"),
        }
    }

    /// Registers this node's record (claiming its name if `with_name`) at `server`.
    async fn register_at(&self, spec: &str, server: Address, with_name: bool) -> Registered {
        match register_fresh(self, server, with_name).await {
            Ok(observed) => {
                let observed = canonical(observed);
                let observed_known = self.endpoints().contains(&observed);
                self.set_observed(spec, observed);
                Registered::Stored { observed_known }
            }
            Err(e @ RendezvousError::NameTaken { .. }) if with_name => {
                Registered::NameTaken(e.to_string())
            }
            Err(e) => Registered::Failed(e.to_string()),
        }
    }

    fn set_observed(&self, spec: &str, observed: SocketAddr) {
        let mut servers = self.servers.lock().expect("server state lock");
        if let Some(state) = servers.iter_mut().find(|s| s.server == spec) {
            state.observed = Some(observed);
        }
    }

    /// Shows a registration's state in `status`, and logs its changes: once per failure
    /// streak, so that a peer cannot make this node flood its log.
    fn note_registration(
        &self,
        index: usize,
        machine: &Registration,
        server: Option<Address>,
        (was_registered, was_failing): (bool, bool),
    ) {
        let mut servers = self.servers.lock().expect("server state lock");
        let state = &mut servers[index];
        let spec = state.server.clone();
        if machine.is_registered() {
            state.address = server;
            if !was_registered {
                tracing::info!(server = %spec, rendezvous = ?server, observed = ?state.observed, "registered");
            }
        }
        if let Some(e) = machine.last_error()
            && !was_failing
        {
            tracing::warn!(server = %spec, error = %e, "cannot register with rendezvous; retrying");
        }
        let refused = machine.name_refused().map(str::to_owned);
        if refused.is_some() && state.name_refused != refused {
            tracing::error!(server = %spec, reason = refused.as_deref().unwrap_or_default(), "name not taken");
        }
        state.registered = machine.is_registered();
        state.last_error = machine.last_error().map(str::to_owned);
        state.name_refused = refused;
    }
}

/// Registers this node's record; if the server holds a newer one (made before this node's
/// clock stepped back, or before its home was restored), moves past it and registers again.
async fn register_fresh(
    daemon: &Daemon,
    server: Address,
    with_name: bool,
) -> Result<SocketAddr, RendezvousError> {
    let record = daemon.own_record(with_name);
    match rendezvous::register(&daemon.node, server, record).await {
        Err(RendezvousError::Stale { stored_seq }) if daemon.move_seq_past(stored_seq) => {
            rendezvous::register(&daemon.node, server, daemon.own_record(with_name)).await
        }
        other => other,
    }
}
