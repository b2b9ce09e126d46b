//! The `ternd` node: a [`Node`] plus everything a daemon adds around it — its home, the trust
//! list, the rendezvous registry it serves, registration with its configured rendezvous
//! servers, finding peers by address, and the built-in echo service.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::Address;
use tern_proto::record::{MAX_ENDPOINTS, Record};
use tokio::io::AsyncWriteExt;

use crate::TransportConfig;
use crate::home::{Home, HomeError};
use crate::node::{
    Access, Datagram, DatagramError, DialError, Listener, Node, NodeError, OverlayStream,
    ProbeError,
};
use crate::rendezvous::{
    self, PUNCH_WINDOW, RECORD_LIFETIME, REFRESH_INTERVAL, Registry, unix_now,
};
use crate::streams::StreamTable;
use crate::transport::paths::canonical;
use crate::trust::{TRUST_FILE, TrustError, TrustStore};
use tokio::sync::mpsc;

/// The UDP port `ternd` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7440;
/// Virtual port of the built-in echo service (`ternctl ping`, `ternctl bench`).
pub const ECHO_PORT: u16 = 7;
/// Ports below this are tern's own; applications cannot listen on them.
pub const FIRST_APP_PORT: u16 = 1024;
/// The rendezvous records this node holds, kept across restarts.
pub const RECORDS_FILE: &str = "rendezvous.records";
/// How often changed records are written out (a crash loses at most this much).
const PERSIST_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub home: Home,
    pub listen: SocketAddr,
    /// `HOST:PORT` of each rendezvous; empty: this node is its own.
    pub rendezvous: Vec<String>,
    pub transport: TransportConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("cannot listen on UDP {addr}: {source}. Pick another --listen address or port")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
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
}

/// What the node knows about one configured rendezvous server.
#[derive(Debug, Clone, serde::Serialize)]
struct ServerState {
    server: String,
    address: Option<Address>,
    registered: bool,
    observed: Option<SocketAddr>,
    last_error: Option<String>,
}

pub struct Daemon {
    home: Home,
    node: Node,
    registry: Arc<Mutex<Registry>>,
    servers: Mutex<Vec<ServerState>>,
    trust: Mutex<TrustStore>,
    listeners: Mutex<HashMap<u16, Arc<tokio::sync::Mutex<Listener>>>>,
    streams: Mutex<StreamTable>,
}

impl Daemon {
    /// Loads the identity, binds the socket and starts every service. Needs a tokio runtime.
    pub fn start(config: DaemonConfig) -> Result<Arc<Self>, DaemonError> {
        let socket = UdpSocket::bind(config.listen).map_err(|source| DaemonError::Bind {
            addr: config.listen,
            source,
        })?;
        Self::start_on(config, socket)
    }

    /// Like [`Daemon::start`] on a socket the caller bound (in a network namespace, say);
    /// `config.listen` is not used.
    pub fn start_on(config: DaemonConfig, socket: UdpSocket) -> Result<Arc<Self>, DaemonError> {
        let identity = config.home.load_or_create_identity()?;
        let trust = TrustStore::load(config.home.dir().join(TRUST_FILE))?;
        let node = Node::start(identity, socket, config.transport)?;
        node.set_trusted(trust.trusted().iter().copied());
        let mut registry = Registry::default();
        let records_path = config.home.dir().join(RECORDS_FILE);
        if let Ok(bytes) = std::fs::read(&records_path) {
            let (loaded, skipped) = registry.load_file(unix_now(), &bytes);
            tracing::info!(loaded, skipped, file = %records_path.display(), "rendezvous records restored");
        }
        let daemon = Arc::new(Self {
            home: config.home,
            node: node.clone(),
            registry: Arc::new(Mutex::new(registry)),
            servers: Mutex::new(
                config
                    .rendezvous
                    .iter()
                    .map(|server| ServerState {
                        server: server.clone(),
                        address: None,
                        registered: false,
                        observed: None,
                        last_error: None,
                    })
                    .collect(),
            ),
            trust: Mutex::new(trust),
            listeners: Mutex::new(HashMap::new()),
            streams: Mutex::new(StreamTable::default()),
        });
        tokio::spawn(rendezvous::serve(node.clone(), daemon.registry.clone()));
        let echo = node
            .listen(ECHO_PORT, Access::Open)
            .expect("a fresh node has no listener on the echo port");
        tokio::spawn(serve_echo(echo));
        tokio::spawn(refresh_own_record(Arc::downgrade(&daemon)));
        tokio::spawn(persist_records(Arc::downgrade(&daemon), records_path));
        for index in 0..config.rendezvous.len() {
            tokio::spawn(keep_registered(Arc::downgrade(&daemon), index));
        }
        Ok(daemon)
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
            interface_addresses()
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

    fn own_record(&self) -> Record {
        // Microseconds make every new record's seq larger than the last, across restarts.
        let seq = crate::node::unix_micros();
        let expires = unix_now() + RECORD_LIFETIME.as_secs();
        Record::sign(self.node.secret_identity(), &self.endpoints(), seq, expires)
            .expect("endpoints are truncated to the record's maximum")
    }

    /// `target`'s record, from this node's registry or one of its rendezvous servers (which
    /// is returned too: it can introduce us).
    async fn find(&self, target: Address) -> Result<(Record, Option<Address>), DaemonError> {
        if let Some(record) = self
            .registry
            .lock()
            .expect("registry lock")
            .lookup(unix_now(), target)
        {
            return Ok((record.clone(), None));
        }
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
            match rendezvous::lookup(&self.node, server, target).await {
                Ok(Some(record)) => return Ok((record, Some(server))),
                Ok(None) => {}
                Err(e) => errors.push(format!("rendezvous {server}: {e}")),
            }
        }
        if errors.is_empty() {
            Err(DaemonError::NotFound(target))
        } else {
            Err(DaemonError::Unreachable {
                peer: target,
                detail: errors.join("; "),
            })
        }
    }

    /// Connects to a rendezvous given as `HOST:PORT` and returns its address.
    async fn reach_server(&self, spec: &str) -> Result<Address, String> {
        let at = tokio::net::lookup_host(spec)
            .await
            .map_err(|e| format!("cannot resolve {spec}: {e}"))?
            .next()
            .ok_or_else(|| format!("{spec} resolves to no address"))?;
        self.node.connect_any(at).await.map_err(|e| e.to_string())
    }

    /// A verified connection to `target`, found through the rendezvous if need be. Punches
    /// first: the rendezvous that knows the target introduces us, both sides probe each
    /// other's endpoints from their one socket, and QUIC goes to the endpoint that answered.
    /// Plain dials to each endpoint come next (peers that do not know us yet), and last the
    /// rendezvous relays the QUIC packets (no common direct path, e.g. symmetric NATs).
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
        // The introduction is answered once the target has started probing us, so our first
        // probes already meet an open NAT on its side.
        let introduced = match via {
            Some(server) => {
                rendezvous::request_introduction(&self.node, server, target, self.own_record())
                    .await
            }
            None => Ok(()),
        };
        let answered = self
            .node
            .probe(target, &record.endpoints, PUNCH_WINDOW)
            .await;
        if let Err(e) = &introduced {
            tracing::debug!(peer = %target, error = %e, "no introduction");
        }
        let mut errors = Vec::new();
        // After an introduction that no probe answered, plain dials would only time out:
        // neither NAT lets the other in. Go to the relay.
        let punch_failed = introduced.is_ok() && via.is_some() && answered.is_none();
        let plain = if punch_failed {
            Vec::new()
        } else {
            record.endpoints.clone()
        };
        for endpoint in answered.into_iter().chain(plain) {
            match self.node.connect(target, endpoint).await {
                Ok(()) => return Ok(()),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if let Some(server) = via
            && let Some(relay) = self.node.remote_of(server)
        {
            match self.node.connect_via_relay(target, relay).await {
                Ok(()) => {
                    tracing::info!(peer = %target, %relay, "connected through the relay");
                    return Ok(());
                }
                Err(e) => errors.push(format!("through the relay: {e}")),
            }
        }
        Err(DaemonError::Unreachable {
            peer: target,
            detail: if errors.is_empty() {
                "its record lists no endpoints".into()
            } else {
                errors.join("; ")
            },
        })
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
        let changed = trust.set(peer, trusted)?;
        self.node.set_trusted(trust.trusted().iter().copied());
        Ok(changed)
    }

    pub fn trust_list(&self) -> Vec<Address> {
        self.trust
            .lock()
            .expect("trust lock")
            .trusted()
            .iter()
            .copied()
            .collect()
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
            "peers": self.node.peers().len(),
            "records_held": self.registry.lock().expect("registry lock").len(),
            "home": self.home.dir(),
        })
    }
}

async fn serve_echo(mut listener: Listener) {
    while let Some(mut stream) = listener.accept().await {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stream.recv, &mut stream.send).await;
            let _ = stream.send.shutdown().await;
        });
    }
}

/// Keeps this node's own record in its own registry fresh, so peers that use this node as
/// their rendezvous can find it.
async fn refresh_own_record(daemon: std::sync::Weak<Daemon>) {
    loop {
        let Some(d) = daemon.upgrade() else { return };
        let record = d.own_record();
        if let Err(e) = d
            .registry
            .lock()
            .expect("registry lock")
            .register(unix_now(), record)
        {
            tracing::warn!(error = %e, "own record not stored");
        }
        drop(d);
        tokio::time::sleep(REFRESH_INTERVAL).await;
    }
}

/// Writes the registry to the home whenever it changed (atomically: temp file, rename).
async fn persist_records(daemon: std::sync::Weak<Daemon>, path: std::path::PathBuf) {
    let mut written = Vec::new();
    loop {
        tokio::time::sleep(PERSIST_INTERVAL).await;
        let Some(d) = daemon.upgrade() else { return };
        let now = d
            .registry
            .lock()
            .expect("registry lock")
            .to_file(unix_now());
        drop(d);
        if now == written {
            continue;
        }
        let tmp = path.with_extension("tmp");
        match std::fs::write(&tmp, &now).and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => written = now,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot save rendezvous records")
            }
        }
    }
}

/// Registers with one rendezvous server and refreshes; retries with capped, jittered backoff.
async fn keep_registered(daemon: std::sync::Weak<Daemon>, index: usize) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let Some(d) = daemon.upgrade() else { return };
        let spec = d.servers.lock().expect("server state lock")[index]
            .server
            .clone();
        let outcome = register_once(&d, &spec).await;
        let wait = {
            let mut servers = d.servers.lock().expect("server state lock");
            let state = &mut servers[index];
            match outcome {
                Ok((address, observed)) => {
                    if !state.registered {
                        tracing::info!(server = %spec, rendezvous = %address, %observed, "registered");
                    }
                    state.address = Some(address);
                    state.registered = true;
                    state.observed = Some(observed);
                    state.last_error = None;
                    backoff = Duration::from_secs(1);
                    REFRESH_INTERVAL
                }
                Err(e) => {
                    // One warning per failure streak: a peer cannot make us flood the log.
                    if state.last_error.is_none() {
                        tracing::warn!(server = %spec, error = %e, "cannot register with rendezvous; retrying");
                    }
                    state.registered = false;
                    state.last_error = Some(e);
                    let wait = jitter(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    wait
                }
            }
        };
        drop(d);
        tokio::time::sleep(wait).await;
    }
}

async fn register_once(daemon: &Daemon, spec: &str) -> Result<(Address, SocketAddr), String> {
    let server = daemon.reach_server(spec).await?;
    let observed = rendezvous::register(&daemon.node, server, daemon.own_record())
        .await
        .map_err(|e| e.to_string())?;
    let observed = canonical(observed);
    let known = daemon.endpoints().contains(&observed);
    {
        let mut servers = daemon.servers.lock().expect("server state lock");
        if let Some(state) = servers.iter_mut().find(|s| s.server == spec) {
            state.observed = Some(observed);
        }
    }
    if !known {
        // Publish the address the rendezvous saw too (the NAT's, seen from outside).
        rendezvous::register(&daemon.node, server, daemon.own_record())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok((server, observed))
}

/// 75–125 % of `base`, so that many nodes retrying do not move in lockstep.
fn jitter(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    base.mul_f64(0.75 + f64::from(byte[0]) / 510.0)
}

/// The host's interface addresses that are up, loopback last.
fn interface_addresses() -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list that we walk read-only and free exactly once.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return vec![IpAddr::from([127, 0, 0, 1])];
        }
        let mut cursor = head;
        while !cursor.is_null() {
            let entry = &*cursor;
            let up = entry.ifa_flags & libc::IFF_UP as u32 != 0;
            if up && !entry.ifa_addr.is_null() {
                match i32::from((*entry.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                        addresses.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        // Link-local addresses need a scope id a record cannot carry.
                        if ip.segments()[0] & 0xffc0 != 0xfe80 {
                            addresses.push(IpAddr::V6(ip));
                        }
                    }
                    _ => {}
                }
            }
            cursor = entry.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    addresses.sort_by_key(|ip| ip.is_loopback());
    addresses
}
