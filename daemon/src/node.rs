//! `Node`: one identity, one UDP socket, one QUIC endpoint. It keeps one verified connection
//! per peer, carries overlay streams and datagrams to virtual ports, and answers STUN and
//! sealed control packets (ping) on the same socket.
//!
//! Shape: tasks own the I/O (endpoint accept loop, one control-packet loop, two loops per
//! connection); all shared facts sit in one `State` behind a mutex that is never held across
//! an `.await`. Which path a connection takes (direct or relayed) is the path table's
//! (`transport::paths`); when to punch and when to move is `traversal`'s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use tern_proto::control::{
    ControlError, ControlKeys, ControlMessage, Counter, ReplayWindow, peek_addresses,
};
use tern_proto::packet::{PacketKind, RelayHeader, TernType};
use tern_proto::stream::{
    DATAGRAM_HEADER_LEN, PREAMBLE_LEN, Preamble, StreamStatus, decode_datagram,
    encode_datagram_header,
};
use tern_proto::{Address, PublicIdentity, SecretIdentity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::backoff::accept_patiently;
use crate::env::{BoundUdp, BufferSizes, Env, EnvExt, LinkListener};
use crate::ratelimit::RateLimiter;
use crate::tasks::Tasks;
use crate::transport::handshake::{self, HandshakeError, Verified};
use crate::transport::paths::{Route, is_link, source_key};
use crate::transport::socket::{DemuxSocket, Diverted, Relayed};
use crate::transport::stun;
use crate::traversal::punch::{Outcome, PROBE_INTERVAL, Probed, Punch};

/// Tunables of the transport. The defaults suit the open internet behind home NATs.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// QUIC keep-alive: well inside the 30 s a Linux NAT keeps an unanswered UDP mapping.
    pub keep_alive: Duration,
    /// A connection with no packets for this long is closed.
    pub idle_timeout: Duration,
    /// Requested UDP socket buffer size (each direction).
    pub socket_buffer_bytes: usize,
    /// Inbound handshakes in progress at once; more are refused.
    pub max_handshakes: usize,
    /// How long a dial may take, handshake and identity check included.
    pub dial_timeout: Duration,
    /// Streams waiting for `accept` on one port before new ones are refused as busy.
    pub stream_backlog: usize,
    /// Datagrams waiting on one port before new ones are dropped.
    pub datagram_backlog: usize,
    /// How long an opened stream may take to send its preamble, or to answer one.
    pub preamble_timeout: Duration,
    /// Concurrent streams a peer may open on one connection.
    pub max_streams_per_peer: u32,
    /// Serving as a relay: packets one peer may have relayed per second (and in a burst);
    /// past this they are dropped and counted.
    pub relay_packets_per_second: f64,
    /// Bytes one stream may have in flight towards this node (QUIC stream receive window).
    pub stream_window: u32,
    /// Bytes all streams of one connection may have in flight towards this node together:
    /// what one peer can make this node buffer, whatever its streams do.
    pub connection_window: u32,
    /// Verified connections kept per identity (a peer that restarted, two dialling at
    /// once); a newer one closes the oldest.
    pub max_connections_per_peer: usize,
    /// Verified connections in total; past this, new inbound handshakes are refused.
    pub max_connections: usize,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            socket_buffer_bytes: 8 << 20,
            max_handshakes: 256,
            dial_timeout: Duration::from_secs(10),
            stream_backlog: 128,
            datagram_backlog: 256,
            preamble_timeout: Duration::from_secs(10),
            max_streams_per_peer: 1024,
            relay_packets_per_second: 50_000.0,
            // quinn's default per stream (1.25 MB); its connection default is unbounded.
            stream_window: 1_250_000,
            connection_window: 16 << 20,
            max_connections_per_peer: 4,
            max_connections: 4096,
        }
    }
}

impl TransportConfig {
    /// The QUIC transport settings a node uses (benchmarks match them for plain quinn).
    pub fn quic(&self) -> quinn::TransportConfig {
        let mut quic = quinn::TransportConfig::default();
        quic.keep_alive_interval(Some(self.keep_alive));
        quic.max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok());
        quic.max_concurrent_bidi_streams(self.max_streams_per_peer.into());
        quic.stream_receive_window(self.stream_window.into());
        quic.receive_window(self.connection_window.into());
        // The identity hello is the only unidirectional stream.
        quic.max_concurrent_uni_streams(1u8.into());
        quic
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot set up the UDP socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("cannot start the QUIC endpoint: {0}")]
    Endpoint(#[source] std::io::Error),
}

/// The node a dial was meant for: a known address, or whichever node answers (a rendezvous
/// dialled by its UDP address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialled(pub Option<Address>);

impl std::fmt::Display for Dialled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(address) => write!(f, "{address}"),
            None => f.write_str("the node"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("handshake with {peer} at {at} failed: {source}")]
    Handshake {
        peer: Dialled,
        at: Route,
        source: HandshakeError,
    },
    #[error(
        "no answer from {peer} at {at} within {timeout:?}: check that its ternd is running and \
         that the address is reachable"
    )]
    Timeout {
        peer: Dialled,
        at: Route,
        timeout: Duration,
    },
    #[error("no TCP link to {at}: {source}")]
    Tcp {
        at: SocketAddr,
        source: std::io::Error,
    },
    #[error("not connected to {0}: dial it first")]
    NotConnected(Address),
    #[error("{peer} refused the stream to port {port}: {}", refusal_reason(*.status, *.port))]
    Refused {
        peer: Address,
        port: u16,
        status: StreamStatus,
    },
    #[error("{peer} did not answer the stream to port {port} within {timeout:?}")]
    NoAnswer {
        peer: Address,
        port: u16,
        timeout: Duration,
    },
    #[error("the connection to {peer} broke: {reason}")]
    ConnectionLost { peer: Address, reason: String },
    #[error("the node is shutting down")]
    ShuttingDown,
}

fn refusal_reason(status: StreamStatus, port: u16) -> String {
    match status {
        StreamStatus::NotTrusted => {
            "this node is not on its trust list (ask its operator to `ternctl trust add` it)".into()
        }
        StreamStatus::NoListener => format!("nothing listens on port {port} there"),
        StreamStatus::Busy => format!("port {port} has too many streams waiting; try again"),
        StreamStatus::BadPreamble => "it did not understand the stream preamble".into(),
        StreamStatus::Accepted => "accepted".into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error(transparent)]
    Dial(#[from] DialError),
    #[error("the exchange failed: {0}")]
    Stream(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("port {0} is already in use on this node")]
    InUse(u16),
}

#[derive(Debug, thiserror::Error)]
pub enum DatagramError {
    #[error("not connected to {0}: dial it first")]
    NotConnected(Address),
    #[error("datagram to {peer} not sent: {reason}")]
    Send { peer: Address, reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no verified connection to {0}, so its key is unknown: dial it first")]
    UnknownPeer(Address),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("could not send: {0}")]
    Send(#[source] std::io::Error),
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error("the path is relayed; control packets do not cross relays")]
    Relayed,
}

/// What the node knows about a connected peer, for `peers` and `status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerInfo {
    pub address: Address,
    /// `direct`, `lan` (at a private-network address: no NAT in between), or `relay` when
    /// packets go through a relay.
    pub path: &'static str,
    /// The UDP endpoint in use (the relay's, on a relayed path).
    pub remote: SocketAddr,
    /// `udp`, or `tcp` when the packets cross a TCP link (the network blocks UDP).
    pub transport: &'static str,
    pub rtt_ms: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Seconds since the Unix epoch when the connection was verified.
    pub since: u64,
}

/// One end of an overlay stream: bytes in order, both directions, like a TCP connection.
#[derive(Debug)]
pub struct OverlayStream {
    pub peer: Address,
    pub local_port: u16,
    pub remote_port: u16,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

impl AsyncRead for OverlayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for OverlayStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.send)
            .poll_write(cx, buf)
            .map_err(Into::into)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.send).poll_shutdown(cx)
    }
}

/// An overlay datagram received on a listened port.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub from: Address,
    pub source_port: u16,
    pub payload: Bytes,
}

/// Streams and datagrams arriving on one virtual port; the port is freed when this drops.
pub struct Listener {
    port: u16,
    streams: mpsc::Receiver<OverlayStream>,
    datagrams: Option<mpsc::Receiver<Datagram>>,
    shared: Weak<Shared>,
}

impl Listener {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The next accepted stream; `None` once the node has shut down.
    pub async fn accept(&mut self) -> Option<OverlayStream> {
        self.streams.recv().await
    }

    /// The next datagram; `None` once the node has shut down or the queue was taken.
    pub async fn recv_datagram(&mut self) -> Option<Datagram> {
        self.datagrams.as_mut()?.recv().await
    }

    /// Hands the port's datagram queue to another owner, so that streams and datagrams can be
    /// awaited by different tasks.
    pub fn take_datagrams(&mut self) -> Option<mpsc::Receiver<Datagram>> {
        self.datagrams.take()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.state().ports.remove(&self.port);
        }
    }
}

/// Who may open streams to (and send datagrams to) a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any verified peer.
    Open,
    /// Only peers on the node's trust list.
    Trusted,
}

struct PortSenders {
    streams: mpsc::Sender<OverlayStream>,
    datagrams: mpsc::Sender<Datagram>,
    access: Access,
}

struct Peer {
    connection: quinn::Connection,
    since: SystemTime,
}

/// A verified identity this node may exchange sealed control packets with: a connected peer,
/// or one it is about to punch a hole to.
struct Known {
    keys: Arc<ControlKeys>,
    replay: ReplayWindow,
    /// Where its latest ping came from (a peer-reflexive punching candidate).
    pinged_from: Option<SocketAddr>,
}

/// Identities kept for sealed control packets; past this, an unconnected one is forgotten.
const MAX_KNOWN: usize = 4096;

#[derive(Default)]
struct State {
    /// The newest verified connection to each peer: it carries new streams.
    peers: HashMap<Address, Peer>,
    /// Every verified connection still open, per identity (at most
    /// `max_connections_per_peer` each).
    connections: HashMap<Address, Vec<quinn::Connection>>,
    ports: HashMap<u16, PortSenders>,
    trusted: std::collections::HashSet<Address>,
    known: HashMap<Address, Known>,
    pings: HashMap<u64, PendingPing>,
    stun: HashMap<stun::TransactionId, oneshot::Sender<SocketAddr>>,
    next_ephemeral_port: u16,
}

/// A sealed ping waiting for its pong. Only `peer` can answer it: the id is random, so a pong
/// with it proves the ping reached `peer` along the path it was sent on, and a pong from
/// another peer says nothing about this one. (The pong may come back from another of the
/// peer's addresses: its kernel picks the source.)
struct PendingPing {
    peer: Address,
    answer: oneshot::Sender<SocketAddr>,
}

const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

impl State {
    fn ephemeral_port(&mut self) -> u16 {
        let span = EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start() + 1;
        self.next_ephemeral_port = (self.next_ephemeral_port + 1) % span;
        EPHEMERAL_PORTS.start() + self.next_ephemeral_port
    }

    /// The port's queue if `peer` may use it, else why not.
    fn admit<T>(
        &self,
        port: u16,
        peer: Address,
        queue: impl Fn(&PortSenders) -> &mpsc::Sender<T>,
    ) -> Result<mpsc::Sender<T>, StreamStatus> {
        let entry = self.ports.get(&port).ok_or(StreamStatus::NoListener)?;
        if entry.access == Access::Trusted && !self.trusted.contains(&peer) {
            return Err(StreamStatus::NotTrusted);
        }
        Ok(queue(entry).clone())
    }

    fn learn(&mut self, me: &SecretIdentity, peer: &PublicIdentity) {
        if self.known.contains_key(&peer.address()) {
            return;
        }
        if self.known.len() >= MAX_KNOWN {
            let peers = &self.peers;
            if let Some(stale) = self.known.keys().find(|a| !peers.contains_key(a)).copied() {
                self.known.remove(&stale);
            }
        }
        self.known.insert(
            peer.address(),
            Known {
                keys: Arc::new(ControlKeys::new(me, peer)),
                replay: ReplayWindow::default(),
                pinged_from: None,
            },
        );
    }

    fn connection_count(&self) -> usize {
        self.connections.values().map(Vec::len).sum()
    }

    fn live_connection(&self, peer: Address) -> Option<quinn::Connection> {
        self.peers
            .get(&peer)
            .filter(|p| p.connection.close_reason().is_none())
            .map(|p| p.connection.clone())
    }
}

struct Shared {
    identity: SecretIdentity,
    endpoint: quinn::Endpoint,
    socket: Arc<DemuxSocket>,
    client_config: quinn::ClientConfig,
    config: TransportConfig,
    local_addr: SocketAddr,
    buffer_sizes: BufferSizes,
    state: Mutex<State>,
    /// Sealed control packets' counters and signed records' seqs: one never-repeating count.
    counter: Mutex<Counter>,
    probe_budget: Mutex<ProbeBudget>,
    limited: LimitCounters,
    dial_locks: Mutex<HashMap<Address, Arc<tokio::sync::Mutex<()>>>>,
    /// Every task of this node runs in it (`Node::spawn`).
    span: tracing::Span,
    tasks: Arc<Tasks>,
    env: Arc<dyn Env>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("node state lock poisoned")
    }

    fn next_counter(&self) -> u64 {
        self.counter.lock().expect("counter lock").advance()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.endpoint.close(0u32.into(), b"node shut down");
        self.tasks.stop();
    }
}

/// Datagrams a node dropped, by reason (`ternctl status` shows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Drops {
    /// Neither STUN, tern nor QUIC.
    pub unknown: u64,
    /// STUN, control and relay packets beyond what the control task keeps queued.
    pub control_queue_full: u64,
    /// Relay frames for a path this node has no route for.
    pub unroutable: u64,
    /// Relay frames beyond a peer's relay rate.
    pub relay_rate_limited: u64,
}

/// What the node's limits turned away (`ternctl status`: `limits_hit`).
#[derive(Debug, Default)]
struct LimitCounters {
    handshakes_refused: AtomicU64,
    handshakes_retried: AtomicU64,
    connections_closed: AtomicU64,
    probes_limited: AtomicU64,
}

/// Counts of limits hit since the node started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LimitsHit {
    /// Inbound handshakes refused: too many in flight, from one source, or connections.
    pub handshakes_refused: u64,
    /// Inbound handshakes asked to prove their address first (QUIC Retry).
    pub handshakes_retried: u64,
    /// Connections closed because their identity opened more than it may keep.
    pub connections_closed: u64,
    /// Hole-punching probes not sent: past the per-peer or total probe rate.
    pub probes_limited: u64,
    /// TCP links refused: too many in all or from one IP.
    pub links_refused: u64,
    /// STUN and control packets dropped: past one source's rate.
    pub control_packets_limited: u64,
}

/// A running node. Cloning gives another handle to the same node; it shuts down when the last
/// handle is dropped or [`Node::close`] is called.
#[derive(Clone)]
pub struct Node {
    shared: Arc<Shared>,
}

impl Node {
    /// Starts a node on a bound UDP socket (`Env::bind_udp`), taking everything else from
    /// `env`. Must run inside a tokio runtime.
    pub fn start(
        identity: SecretIdentity,
        socket: BoundUdp,
        env: Arc<dyn Env>,
        config: TransportConfig,
    ) -> Result<Self, NodeError> {
        // Every task started below (quinn's drivers too) runs in the node's span.
        let span = tracing::info_span!("node", address = %identity.address());
        let _in_span = span.enter();
        let tasks = Arc::new(Tasks::default());
        let buffer_sizes = socket.buffers;
        let (demux, diverted) = DemuxSocket::new(
            socket.socket,
            identity.address(),
            config.relay_packets_per_second,
            tasks.clone(),
        )
        .map_err(NodeError::Socket)?;
        let local_addr = demux.real_local_addr().map_err(NodeError::Socket)?;
        let tls = handshake::tls_configs(&identity, Arc::new(config.quic()), &*env);
        // Keys that survive restarts: a node that crashed and came back knows the old
        // connections' IDs for its own and answers their packets with a stateless reset its
        // peers recognise, so their streams fail at once instead of after the idle timeout.
        let reset_key = identity.derive_secret("tern 2026 QUIC stateless reset key");
        let cid_key = identity.derive_secret("tern 2026 QUIC connection ID key");
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &reset_key,
        )));
        let cid_env = env.clone();
        endpoint_config.cid_generator(move || {
            Box::new(crate::transport::cid::KeyedConnectionIds::new(
                cid_key,
                cid_env.clone(),
            ))
        });
        // quinn's own choices (initial connection IDs, GREASE) from the env's randomness.
        endpoint_config.rng_seed(Some(env.random_bytes()));
        // Keep QUIC's first byte at 0x40 or above so the first-byte demultiplexing holds.
        endpoint_config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(tls.server),
            demux.clone(),
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(NodeError::Endpoint)?;
        tracing::info!(
            %local_addr,
            receive_buffer = buffer_sizes.receive,
            send_buffer = buffer_sizes.send,
            "node listening"
        );
        let shared = Arc::new(Shared {
            identity,
            endpoint: endpoint.clone(),
            socket: demux,
            client_config: tls.client,
            local_addr,
            buffer_sizes,
            state: Mutex::new(State::default()),
            counter: Mutex::new(Counter::starting_at_unix_micros(env.unix_micros())),
            probe_budget: Mutex::new(ProbeBudget::default()),
            limited: LimitCounters::default(),
            dial_locks: Mutex::new(HashMap::new()),
            config,
            span: span.clone(),
            tasks,
            env,
        });
        shared.tasks.spawn(accept_loop(
            endpoint,
            Arc::downgrade(&shared),
            Arc::new(Semaphore::new(shared.config.max_handshakes)),
        ));
        shared
            .tasks
            .spawn(control_loop(diverted, Arc::downgrade(&shared)));
        // Nodes whose network blocks UDP reach this one over TCP, on the same port.
        match shared.env.listen_tcp(local_addr) {
            Ok(listener) => {
                shared
                    .tasks
                    .spawn(accept_links(listener, Arc::downgrade(&shared)));
            }
            Err(e) => tracing::warn!(%local_addr, error = %e, "no TCP links: cannot listen on TCP"),
        }
        Ok(Self { shared })
    }

    pub fn address(&self) -> Address {
        self.shared.identity.address()
    }

    /// Starts a task that belongs to this node: it stops when the node does.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.shared.tasks.spawn(task);
    }

    /// Tasks this node runs now (its daemon's and local API's included).
    pub fn task_count(&self) -> usize {
        self.shared.tasks.len()
    }

    /// Seconds since the Unix epoch by the env's wall clock.
    pub fn unix_now(&self) -> u64 {
        self.shared.env.unix_now()
    }

    /// What this node takes from the outside world.
    pub fn env(&self) -> &Arc<dyn Env> {
        &self.shared.env
    }

    /// The node's tracing span (its address): tasks started in it belong to the node.
    pub fn span(&self) -> tracing::Span {
        self.shared.span.clone()
    }

    pub(crate) fn secret_identity(&self) -> &SecretIdentity {
        &self.shared.identity
    }

    /// Raises the counter behind sealed control packets and record seqs to at least `floor`
    /// (kept across restarts, so a clock that stepped back cannot make them repeat).
    pub fn raise_counter(&self, floor: u64) {
        self.shared
            .counter
            .lock()
            .expect("counter lock")
            .raise_to(floor);
    }

    /// The counter's next value, for a signed record's seq: larger than every seq and control
    /// counter this node used before.
    pub fn next_sequence(&self) -> u64 {
        self.shared.next_counter()
    }

    pub fn identity(&self) -> &PublicIdentity {
        self.shared.identity.public()
    }

    /// The real UDP address the node's socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    pub fn buffer_sizes(&self) -> BufferSizes {
        self.shared.buffer_sizes
    }

    /// Datagrams dropped so far, by reason.
    pub fn drops(&self) -> Drops {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.shared.socket.stats;
        Drops {
            unknown: stats.unknown_dropped.load(Relaxed),
            control_queue_full: stats.diverted_dropped.load(Relaxed),
            unroutable: stats.unroutable_dropped.load(Relaxed),
            relay_rate_limited: stats.relay_rate_limited.load(Relaxed),
        }
    }

    /// Limits hit so far, by limit.
    pub fn limits_hit(&self) -> LimitsHit {
        use std::sync::atomic::Ordering::Relaxed;
        let limited = &self.shared.limited;
        LimitsHit {
            handshakes_refused: limited.handshakes_refused.load(Relaxed),
            handshakes_retried: limited.handshakes_retried.load(Relaxed),
            connections_closed: limited.connections_closed.load(Relaxed),
            probes_limited: limited.probes_limited.load(Relaxed),
            links_refused: self.shared.socket.stats.links_refused.load(Relaxed),
            control_packets_limited: self.shared.socket.stats.diverted_rate_limited.load(Relaxed),
        }
    }

    /// Makes sure there is a verified connection to `peer`, dialling `at` if there is none.
    pub async fn connect(&self, peer: Address, at: SocketAddr) -> Result<(), DialError> {
        let shared = &self.shared;
        if shared.state().live_connection(peer).is_some() {
            return Ok(());
        }
        // One dial per peer at a time; later callers reuse its connection.
        let lock = shared
            .dial_locks
            .lock()
            .expect("dial lock table poisoned")
            .entry(peer)
            .or_default()
            .clone();
        let dialled = {
            let _dialling = lock.lock().await;
            let connected = shared.state().live_connection(peer).is_some();
            match connected {
                true => Ok(()),
                false => self.dial(Some(peer), Route::Direct(at)).await.map(|_| ()),
            }
        };
        // The last caller out removes the peer's lock: the table holds only dials under way.
        let mut locks = shared.dial_locks.lock().expect("dial lock table poisoned");
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&peer);
        }
        dialled
    }

    /// Connects to `peer` through the relay at `relay` (a node both are connected to), for
    /// when no direct path could be punched.
    pub async fn connect_via_relay(
        &self,
        peer: Address,
        relay: SocketAddr,
    ) -> Result<(), DialError> {
        if self.is_connected(peer) {
            return Ok(());
        }
        self.dial(Some(peer), Route::Relay { relay, peer })
            .await
            .map(|_| ())
    }

    /// Connects to whichever node answers at `at` (a rendezvous known only by its UDP
    /// address) and returns its verified address.
    pub async fn connect_any(&self, at: SocketAddr) -> Result<Address, DialError> {
        self.dial(None, Route::Direct(at)).await
    }

    /// Like [`Node::connect_any`], over a TCP link to `at` (for networks that block UDP):
    /// QUIC, control packets and relay frames to and through that node then cross the link.
    pub async fn connect_any_over_tcp(&self, at: SocketAddr) -> Result<Address, DialError> {
        let timeout = self.shared.config.dial_timeout;
        let tcp_err = |source| DialError::Tcp { at, source };
        let stream = tokio::time::timeout(timeout, self.shared.env.connect_tcp(at))
            .await
            .map_err(|_| DialError::Timeout {
                peer: Dialled(None),
                at: Route::Direct(at),
                timeout,
            })?
            .map_err(tcp_err)?;
        let link = self.shared.socket.add_link(stream).map_err(tcp_err)?;
        self.dial(None, Route::Direct(link)).await
    }

    /// Where a connected peer's packets come from as seen here: its UDP address, or for a
    /// peer on a TCP link, the link's TCP address.
    pub fn observed_address(&self, peer: Address) -> Option<SocketAddr> {
        let remote = self.remote_of(peer)?;
        match is_link(&remote) {
            true => self.shared.socket.link_remote(&remote),
            false => Some(remote),
        }
    }

    async fn dial(&self, expected: Option<Address>, at: Route) -> Result<Address, DialError> {
        let shared = &self.shared;
        let peer = Dialled(expected);
        let synthetic = shared.socket.paths().synthetic_for(at);
        let connecting = shared
            .endpoint
            .connect_with(shared.client_config.clone(), synthetic, "tern")
            .map_err(|e| DialError::Handshake {
                peer,
                at,
                source: e.into(),
            })?;
        let timeout = shared.config.dial_timeout;
        let verified = tokio::time::timeout(
            timeout,
            handshake::finish_dial(connecting, &shared.identity, expected),
        )
        .await
        .map_err(|_| DialError::Timeout { peer, at, timeout })?
        .map_err(|source| DialError::Handshake { peer, at, source })?;
        let address = verified.peer.address();
        register(shared, verified);
        Ok(address)
    }

    /// The UDP address a connected peer is reached at directly (`None` over a relay).
    pub fn remote_of(&self, peer: Address) -> Option<SocketAddr> {
        direct_address(&self.shared, peer)
    }

    /// Entries in the path table (each a path some connection used lately; bounded).
    pub fn paths_held(&self) -> usize {
        self.shared.socket.paths().len()
    }

    /// Closes every connection to `peer`: one this node found it does not want.
    pub fn disconnect(&self, peer: Address) {
        let connections = self.shared.state().connections.remove(&peer);
        for connection in connections.into_iter().flatten() {
            connection.close(CLOSE_UNWANTED.into(), b"not the expected key");
        }
    }

    /// Resolves once the connection to `peer` in use now has closed (at once if there is
    /// none); holds nothing of the node but that connection.
    pub fn disconnected(&self, peer: Address) -> impl std::future::Future<Output = ()> + use<> {
        let connection = self.shared.state().live_connection(peer);
        async move {
            if let Some(connection) = connection {
                connection.closed().await;
            }
        }
    }

    /// QUIC's round-trip estimate to a connected peer.
    pub fn rtt(&self, peer: Address) -> Option<Duration> {
        self.shared.state().live_connection(peer).map(|c| c.rtt())
    }

    /// Whether a verified connection to `peer` is up.
    pub fn is_connected(&self, peer: Address) -> bool {
        self.shared.state().live_connection(peer).is_some()
    }

    /// Replaces the set of peers allowed to reach [`Access::Trusted`] ports; applies at once.
    pub fn set_trusted(&self, trusted: impl IntoIterator<Item = Address>) {
        self.shared.state().trusted = trusted.into_iter().collect();
    }

    /// Opens a stream to `port` on a connected peer and waits for its answer.
    pub async fn open_stream(&self, peer: Address, port: u16) -> Result<OverlayStream, DialError> {
        let (connection, local_port) = {
            let mut state = self.shared.state();
            let connection = state
                .live_connection(peer)
                .ok_or(DialError::NotConnected(peer))?;
            (connection, state.ephemeral_port())
        };
        let lost = |e: &dyn std::fmt::Display| DialError::ConnectionLost {
            peer,
            reason: e.to_string(),
        };
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| lost(&e))?;
        let preamble = Preamble {
            destination_port: port,
            source_port: local_port,
        };
        send.write_all(&preamble.encode())
            .await
            .map_err(|e| lost(&e))?;
        let timeout = self.shared.config.preamble_timeout;
        let mut answer = [0u8; 1];
        tokio::time::timeout(timeout, recv.read_exact(&mut answer))
            .await
            .map_err(|_| DialError::NoAnswer {
                peer,
                port,
                timeout,
            })?
            .map_err(|e| lost(&e))?;
        match StreamStatus::from_byte(answer[0]) {
            Ok(StreamStatus::Accepted) => Ok(OverlayStream {
                peer,
                local_port,
                remote_port: port,
                send,
                recv,
            }),
            Ok(status) => Err(DialError::Refused { peer, port, status }),
            Err(e) => Err(lost(&e)),
        }
    }

    /// Starts accepting streams and datagrams on a virtual port.
    pub fn listen(&self, port: u16, access: Access) -> Result<Listener, ListenError> {
        let mut state = self.shared.state();
        if state.ports.contains_key(&port) {
            return Err(ListenError::InUse(port));
        }
        let (stream_tx, streams) = mpsc::channel(self.shared.config.stream_backlog.max(1));
        let (datagram_tx, datagrams) = mpsc::channel(self.shared.config.datagram_backlog.max(1));
        state.ports.insert(
            port,
            PortSenders {
                streams: stream_tx,
                datagrams: datagram_tx,
                access,
            },
        );
        Ok(Listener {
            port,
            streams,
            datagrams: Some(datagrams),
            shared: Arc::downgrade(&self.shared),
        })
    }

    /// Sends one unreliable datagram to `port` on a connected peer.
    pub fn send_datagram(
        &self,
        peer: Address,
        port: u16,
        source_port: u16,
        payload: &[u8],
    ) -> Result<(), DatagramError> {
        let connection = self
            .shared
            .state()
            .live_connection(peer)
            .ok_or(DatagramError::NotConnected(peer))?;
        let mut datagram = BytesMut::with_capacity(DATAGRAM_HEADER_LEN + payload.len());
        datagram.extend_from_slice(&encode_datagram_header(port, source_port));
        datagram.extend_from_slice(payload);
        connection
            .send_datagram(datagram.freeze())
            .map_err(|e| DatagramError::Send {
                peer,
                reason: e.to_string(),
            })
    }

    /// Lets this node exchange sealed control packets (probes) with `peer` before any
    /// connection exists: the identity comes from a verified record.
    pub fn learn(&self, peer: &PublicIdentity) {
        self.shared.state().learn(&self.shared.identity, peer);
    }

    /// One message on a new stream to `port` on `peer`, then the whole answer (at most
    /// `max_answer` bytes): the shape of tern's own small protocols (rendezvous, trust
    /// requests).
    pub async fn exchange(
        &self,
        peer: Address,
        port: u16,
        message: &[u8],
        max_answer: usize,
    ) -> Result<Vec<u8>, ExchangeError> {
        let stream_err = |e: &dyn std::fmt::Display| ExchangeError::Stream(e.to_string());
        let mut stream = self.open_stream(peer, port).await?;
        stream
            .send
            .write_all(message)
            .await
            .map_err(|e| stream_err(&e))?;
        stream.send.finish().map_err(|e| stream_err(&e))?;
        stream
            .recv
            .read_to_end(max_answer)
            .await
            .map_err(|e| stream_err(&e))
    }

    /// Round trip of a sealed control ping to a known peer, on its current path or at `at`;
    /// over a relayed path, QUIC's own round-trip estimate.
    pub async fn ping(
        &self,
        peer: Address,
        at: Option<SocketAddr>,
    ) -> Result<Duration, ProbeError> {
        match self.ping_within(peer, at, PROBE_TIMEOUT).await {
            // Control packets do not cross relays: QUIC's own round-trip estimate instead.
            Err(ProbeError::Relayed) => self
                .shared
                .state()
                .live_connection(peer)
                .map(|c| c.rtt())
                .ok_or(ProbeError::UnknownPeer(peer)),
            other => other,
        }
    }

    async fn ping_within(
        &self,
        peer: Address,
        at: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<Duration, ProbeError> {
        let shared = &self.shared;
        let (packet, to, txid, answer) = {
            let mut state = shared.state();
            let keys = state
                .known
                .get(&peer)
                .map(|k| k.keys.clone())
                .ok_or(ProbeError::UnknownPeer(peer))?;
            let to = match at {
                Some(at) => at,
                None => {
                    // Ask quinn first: its driver holds its own lock while it takes the path lock.
                    let synthetic = state
                        .live_connection(peer)
                        .ok_or(ProbeError::UnknownPeer(peer))?
                        .remote_address();
                    match shared.socket.paths().route_for(&synthetic) {
                        Some(Route::Direct(real)) => real,
                        // Control packets do not cross relays; the caller asks QUIC instead.
                        Some(Route::Relay { .. }) => return Err(ProbeError::Relayed),
                        None => return Err(ProbeError::UnknownPeer(peer)),
                    }
                }
            };
            let txid = shared.env.random_u64();
            let (answer, rx) = oneshot::channel();
            state.pings.insert(txid, PendingPing { peer, answer });
            let counter = shared.next_counter();
            (
                keys.seal(counter, &ControlMessage::Ping { txid }),
                to,
                txid,
                rx,
            )
        };
        let _forget = ForgetPing { shared, txid };
        let started = Instant::now();
        with_timeout(timeout, async {
            shared
                .socket
                .send_raw(to, &packet)
                .await
                .map_err(ProbeError::Send)?;
            answer.await.map_err(|_| ProbeError::ShuttingDown)
        })
        .await
        .map(|_| started.elapsed())
    }

    /// Whether `peer` answers a sealed ping at `endpoint` within `timeout` (a direct path
    /// check).
    pub async fn check_path(&self, peer: Address, endpoint: SocketAddr, timeout: Duration) -> bool {
        self.ping_within(peer, Some(endpoint), timeout)
            .await
            .is_ok()
    }

    /// Sends the connection to `peer` along `route` from now on; false if there is none.
    pub fn set_route(&self, peer: Address, route: Route) -> bool {
        // Ask quinn first, then take the path lock (never both at once).
        let Some(connection) = self.shared.state().live_connection(peer) else {
            return false;
        };
        let synthetic = connection.remote_address();
        self.shared.socket.paths().set_route(synthetic, route);
        true
    }

    /// Hole punching: pings every candidate endpoint of a known peer, again and again from
    /// this node's one socket, until one answers or `within` passes. Each ping also opens this
    /// side's NAT towards that endpoint; the peer does the same towards us at the same time.
    /// A ping from the peer arriving from an address not among the candidates (its NAT gave
    /// it a new mapping towards us: a peer-reflexive address) becomes a candidate too.
    /// Returns the first endpoint that answered.
    pub async fn probe(
        &self,
        peer: Address,
        candidates: &[SocketAddr],
        within: Duration,
    ) -> Option<SocketAddr> {
        let mut punch = Punch::new(Instant::now(), candidates, within);
        let mut probes = tokio::task::JoinSet::new();
        loop {
            let now = Instant::now();
            punch.handle_timeout(now);
            // Where the peer's own probes came from: its NAT's mapping towards us.
            let reflexive = self
                .shared
                .state()
                .known
                .get(&peer)
                .and_then(|k| k.pinged_from);
            if let Some(reflexive) = reflexive {
                punch.add_candidate(now, reflexive);
            }
            while let Some(candidate) = punch.poll_probe(now) {
                if !self.probe_allowed(peer) {
                    punch.handle_probed(now, candidate, Probed::NotSent);
                    continue;
                }
                let node = self.clone();
                probes.spawn(async move {
                    let probed = match node
                        .ping_within(peer, Some(candidate), PROBE_INTERVAL)
                        .await
                    {
                        Ok(_) => Probed::Answered,
                        Err(ProbeError::Timeout(_)) => Probed::Unanswered,
                        Err(_) => Probed::NotSent,
                    };
                    (candidate, probed)
                });
            }
            match punch.outcome() {
                Outcome::Direct(path) => return Some(path),
                Outcome::GaveUp => return None,
                Outcome::Punching => {}
            }
            // While the window is open, look for a peer-reflexive candidate a few times per
            // probe interval; once closed, only the answers of probes in flight matter.
            let wake = punch
                .poll_timeout()
                .map(|at| at.min(now + PROBE_INTERVAL / 3));
            tokio::select! {
                biased;
                Some(joined) = probes.join_next() => {
                    let Ok((candidate, probed)) = joined else { return None };
                    punch.handle_probed(Instant::now(), candidate, probed);
                }
                _ = async { tokio::time::sleep_until(wake.expect("guarded")).await }, if wake.is_some() => {}
                else => return None,
            }
        }
    }

    /// Takes one probe packet from the node's budget (per peer and in total).
    fn probe_allowed(&self, peer: Address) -> bool {
        let allowed = self
            .shared
            .probe_budget
            .lock()
            .expect("probe budget lock")
            .allow(Instant::now(), peer);
        if !allowed {
            use std::sync::atomic::Ordering::Relaxed;
            self.shared.limited.probes_limited.fetch_add(1, Relaxed);
        }
        allowed
    }

    /// Asks a STUN server which address this node's socket appears from.
    pub async fn stun(&self, server: SocketAddr) -> Result<SocketAddr, ProbeError> {
        let (id, request) = stun::binding_request(self.shared.env.random_bytes());
        let (tx, rx) = oneshot::channel();
        self.shared.state().stun.insert(id, tx);
        let outcome = with_timeout(PROBE_TIMEOUT, async {
            self.shared
                .socket
                .send_raw(server, &request)
                .await
                .map_err(ProbeError::Send)?;
            rx.await.map_err(|_| ProbeError::ShuttingDown)
        })
        .await;
        self.shared.state().stun.remove(&id);
        outcome
    }

    pub fn peers(&self) -> Vec<PeerInfo> {
        let state = self.shared.state();
        let mut peers: Vec<PeerInfo> = state
            .peers
            .iter()
            .filter(|(_, p)| p.connection.close_reason().is_none())
            .filter_map(|(address, p)| {
                let stats = p.connection.stats();
                // Never hold the path lock while calling into quinn (see `ping`).
                let synthetic = p.connection.remote_address();
                let (path, remote) = match self.shared.socket.paths().route_for(&synthetic)? {
                    Route::Direct(real) if is_lan(real) => ("lan", real),
                    Route::Direct(real) => ("direct", real),
                    Route::Relay { relay, .. } => ("relay", relay),
                };
                let (transport, remote) = match is_link(&remote) {
                    true => ("tcp", self.shared.socket.link_remote(&remote)?),
                    false => ("udp", remote),
                };
                Some(PeerInfo {
                    address: *address,
                    path,
                    remote,
                    transport,
                    rtt_ms: p.connection.rtt().as_secs_f64() * 1000.0,
                    bytes_sent: stats.udp_tx.bytes,
                    bytes_received: stats.udp_rx.bytes,
                    since: p
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                })
            })
            .collect();
        peers.sort_by_key(|p| p.address);
        peers
    }

    /// Closes every connection and waits (bounded) for the peers to be told and the
    /// connections to drain.
    pub async fn close(&self) {
        self.shared.endpoint.close(0u32.into(), b"node shut down");
        // quinn holds the socket until closed connections have drained (3 PTO: about 3 s
        // for a connection whose RTT estimate is still the initial one).
        let _ = tokio::time::timeout(DRAIN_WAIT, self.shared.endpoint.wait_idle()).await;
    }

    /// Closes every connection, stops all of the node's tasks and waits until they have ended
    /// and the connections have drained; once the last handle is dropped too, the socket is
    /// free when quinn's endpoint driver next runs. Not for the node's own tasks to call: it
    /// would wait for itself.
    pub async fn stop(&self) {
        self.shared.tasks.shutdown().await;
        self.close().await;
    }

    /// Stops all of the node's tasks at once (each at its next await point).
    pub fn stop_tasks(&self) {
        self.shared.tasks.stop();
    }
}

/// How long `stop` waits for closed connections to drain.
const DRAIN_WAIT: Duration = Duration::from_secs(4);

/// A peer reached at a private-network address shares a network with this node: no NAT
/// between the two. (Loopback counts as direct: the same host.)
fn is_lan(addr: SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_private() || ip.is_link_local(),
        std::net::IpAddr::V6(ip) => ip.is_unique_local() || ip.is_unicast_link_local(),
    }
}

/// Probe packets hole punching may send: per peer (a punch to one peer needs about 60 a
/// second) and in total, so that introductions from many identities cannot make this node
/// a packet cannon.
const PROBES_PER_SECOND_PER_PEER: f64 = 100.0;
const PROBE_BURST_PER_PEER: f64 = 200.0;
const PROBES_PER_SECOND: f64 = 2000.0;
const PROBE_BURST: f64 = 4000.0;

struct ProbeBudget {
    per_peer: RateLimiter,
    total: RateLimiter<()>,
}

impl Default for ProbeBudget {
    fn default() -> Self {
        Self {
            per_peer: RateLimiter::new(PROBES_PER_SECOND_PER_PEER, PROBE_BURST_PER_PEER),
            total: RateLimiter::new(PROBES_PER_SECOND, PROBE_BURST),
        }
    }
}

impl ProbeBudget {
    fn allow(&mut self, now: Instant, peer: Address) -> bool {
        self.per_peer.allow(now, peer) && self.total.allow(now, ())
    }
}

/// How long a ping or STUN request waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Forgets a ping's id however the wait for its pong ends: answered, timed out, or cancelled
/// (a path check dropped with its connection), so pending pings cannot pile up.
struct ForgetPing<'a> {
    shared: &'a Shared,
    txid: u64,
}

impl Drop for ForgetPing<'_> {
    fn drop(&mut self) {
        self.shared.state().pings.remove(&self.txid);
    }
}

async fn with_timeout<T>(
    timeout: Duration,
    probe: impl std::future::Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    tokio::time::timeout(timeout, probe)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// Records a verified connection and starts serving it.
fn register(shared: &Arc<Shared>, verified: Verified) {
    // Dials run in their caller's task: the connection's logs and tasks are the node's.
    let _in_span = shared.span.enter();
    let Verified { connection, peer } = verified;
    let address = peer.address();
    let synthetic = connection.remote_address();
    shared.socket.paths().pin(synthetic);
    {
        let mut state = shared.state();
        // The newest verified connection carries new streams: a peer that restarted has left
        // its old connection dead but not yet timed out. (When both sides dial at once there
        // are two; streams the peer opens on either are served.)
        state.peers.insert(
            address,
            Peer {
                connection: connection.clone(),
                since: shared.env.wall_clock(),
            },
        );
        let kept = state.connections.entry(address).or_default();
        kept.retain(|c| c.close_reason().is_none());
        kept.push(connection.clone());
        if kept.len() > shared.config.max_connections_per_peer.max(1) {
            // One identity cannot pin more than a few connections' worth of memory.
            shared
                .limited
                .connections_closed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            kept.remove(0).close(
                CLOSE_TOO_MANY.into(),
                b"too many connections from this identity",
            );
        }
        state.learn(&shared.identity, &peer);
    }
    tracing::debug!(peer = %address, remote = %connection.remote_address(), "connection verified");
    let tasks = &shared.tasks;
    tasks.spawn(serve_datagrams(
        connection.clone(),
        address,
        Arc::downgrade(shared),
    ));
    tasks.spawn(refuse_uni_streams(connection.clone()));
    tasks.spawn(serve_streams(connection, address, Arc::downgrade(shared)));
}

/// QUIC application close code: an identity opened more connections than a node keeps.
pub const CLOSE_TOO_MANY: u32 = 0x1002;
/// QUIC application close code: the node will not use this peer (not the key it expected).
pub const CLOSE_UNWANTED: u32 = 0x1003;

/// The identity hello is the only unidirectional stream; any later one is stopped at once so
/// its data is never buffered.
async fn refuse_uni_streams(connection: quinn::Connection) {
    while let Ok(mut uni) = connection.accept_uni().await {
        let _ = uni.stop(0u32.into());
    }
}

async fn accept_links(listener: Box<dyn LinkListener>, shared: Weak<Shared>) {
    loop {
        let stream = accept_patiently("TCP links", || listener.accept()).await;
        let from = stream.remote;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.socket.add_link(stream) {
            tracing::debug!(%from, error = %e, "TCP link refused");
        }
    }
}

/// Where an inbound handshake comes from, for per-source limits: the IP it arrived from (a
/// relay's, for relayed ones; the TCP peer's, for a link), IPv6 by its /64, which one host
/// may hold whole.
fn handshake_source(
    socket: &DemuxSocket,
    route: Option<Route>,
    remote: SocketAddr,
) -> std::net::IpAddr {
    let from = match route {
        Some(Route::Relay { relay, .. }) => relay,
        Some(Route::Direct(real)) => real,
        None => remote,
    };
    let from = match is_link(&from) {
        true => socket.link_remote(&from).unwrap_or(from),
        false => from,
    };
    source_key(from)
}

/// Inbound handshakes in flight from one source: past the first, an unvalidated source must
/// answer a Retry; past the second, even a validated one is refused. (Many honest nodes can
/// share one address behind a NAT; a spoofer can share none.)
const UNVALIDATED_PER_SOURCE: usize = 8;
const HANDSHAKES_PER_SOURCE: usize = 64;
/// An unvalidated source (its address not proven by a Retry round trip) gets this long.
const UNVALIDATED_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts inbound QUIC connections. Handshake slots are the scarce resource: once an eighth
/// of them are taken, or a source has several in flight, a source must first prove its
/// address with a QUIC Retry round trip (spoofed sources cannot); no source holds more than
/// a quarter of the slots; an unvalidated one holds its slot for seconds, not the whole
/// dial timeout.
async fn accept_loop(endpoint: quinn::Endpoint, shared: Weak<Shared>, handshakes: Arc<Semaphore>) {
    use std::sync::atomic::Ordering::Relaxed;
    let in_flight: Arc<Mutex<HashMap<std::net::IpAddr, usize>>> = Arc::default();
    while let Some(incoming) = endpoint.accept().await {
        let Some(node) = shared.upgrade() else { return };
        let remote = incoming.remote_address();
        if node.state().connection_count() >= node.config.max_connections {
            tracing::debug!(%remote, "connection limit reached; handshake refused");
            node.limited.handshakes_refused.fetch_add(1, Relaxed);
            incoming.refuse();
            continue;
        }
        let route = node.socket.paths().route_for(&remote);
        let source = handshake_source(&node.socket, route, remote);
        let validated = incoming.remote_address_validated();
        let from_source = in_flight
            .lock()
            .expect("handshake count lock")
            .get(&source)
            .copied()
            .unwrap_or(0);
        let busy = handshakes.available_permits() < node.config.max_handshakes * 7 / 8;
        if !validated && (busy || from_source >= UNVALIDATED_PER_SOURCE) {
            node.limited.handshakes_retried.fetch_add(1, Relaxed);
            if let Err(e) = incoming.retry() {
                tracing::debug!(%remote, error = %e, "retry not possible");
            }
            continue;
        }
        if from_source >= HANDSHAKES_PER_SOURCE {
            tracing::debug!(%remote, ?source, "too many handshakes from one source; refused");
            node.limited.handshakes_refused.fetch_add(1, Relaxed);
            incoming.refuse();
            continue;
        }
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "too many handshakes in flight; refused");
            node.limited.handshakes_refused.fetch_add(1, Relaxed);
            incoming.refuse();
            continue;
        };
        *in_flight
            .lock()
            .expect("handshake count lock")
            .entry(source)
            .or_default() += 1;
        let timeout = match validated {
            true => node.config.dial_timeout,
            false => UNVALIDATED_HANDSHAKE_TIMEOUT.min(node.config.dial_timeout),
        };
        let me = node.identity.clone();
        let tasks = node.tasks.clone();
        drop(node);
        let (shared, in_flight) = (shared.clone(), in_flight.clone());
        tasks.spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout(timeout, async {
                let connecting = incoming.accept().map_err(HandshakeError::from)?;
                handshake::finish_accept(connecting, &me).await
            })
            .await;
            {
                let mut counts = in_flight.lock().expect("handshake count lock");
                if let Some(count) = counts.get_mut(&source) {
                    *count -= 1;
                    if *count == 0 {
                        counts.remove(&source);
                    }
                }
            }
            match (outcome, shared.upgrade()) {
                (Ok(Ok(verified)), Some(shared)) => register(&shared, verified),
                (Ok(Err(e)), _) => tracing::debug!(error = %e, "inbound handshake failed"),
                (Err(_), _) => tracing::debug!(?source, "inbound handshake timed out"),
                (Ok(Ok(_)), None) => {}
            }
        });
    }
}

/// How often a connection's path pin is moved to where quinn now sends (a migrated peer).
const PIN_CHECK: Duration = Duration::from_secs(1);

/// Serves a connection's incoming streams until it closes, keeping its path pinned (also
/// after the peer migrated to a new path), then forgets it.
///
/// The pin marks a path as the peer's proven one: relay frames are taken from it and, serving
/// as a relay, the node forwards the peer's frames to it. quinn moves to a new source at its
/// first packet, before validating it, so a spoofed source would be believed: the pin moves
/// only once the peer answers a sealed ping on the new path.
async fn serve_streams(connection: quinn::Connection, peer: Address, shared: Weak<Shared>) {
    // `register` pinned the path the connection was verified on.
    let mut pinned = connection.remote_address();
    let mut pin_check = tokio::time::interval(PIN_CHECK);
    let mut validating = tokio::task::JoinSet::new();
    let reason = loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => match shared.upgrade() {
                    Some(node) => node.tasks.spawn(answer_stream(send, recv, peer, shared.clone())),
                    None => break quinn::ConnectionError::LocallyClosed,
                },
                Err(e) => break e,
            },
            _ = pin_check.tick(), if validating.is_empty() => {
                // Ask quinn first, then take the path lock (never both at once).
                let now_at = connection.remote_address();
                if now_at != pinned && let Some(shared) = shared.upgrade() {
                    let route = shared.socket.paths().route_for(&now_at);
                    // A slow path (a loaded mobile link) gets a few round trips to answer.
                    let patience = (connection.rtt() * 3).max(PIN_CHECK);
                    let node = Node { shared };
                    validating.spawn(async move {
                        let valid = match route {
                            Some(Route::Direct(real)) => node.check_path(peer, real, patience).await,
                            Some(Route::Relay { .. }) => true,
                            None => false,
                        };
                        (now_at, valid)
                    });
                }
            }
            Some(Ok((now_at, valid))) = validating.join_next() => {
                if valid && connection.remote_address() == now_at && let Some(shared) = shared.upgrade() {
                    let mut paths = shared.socket.paths();
                    paths.pin(now_at);
                    paths.unpin(pinned);
                    pinned = now_at;
                }
            }
        }
    };
    tracing::debug!(%peer, %reason, "connection closed");
    let Some(shared) = shared.upgrade() else {
        return;
    };
    shared.socket.paths().unpin(pinned);
    let mut state = shared.state();
    let id = connection.stable_id();
    if let Some(kept) = state.connections.get_mut(&peer) {
        kept.retain(|c| c.stable_id() != id && c.close_reason().is_none());
    }
    let survivor = state
        .connections
        .get(&peer)
        .and_then(|kept| kept.last().cloned());
    if survivor.is_none() {
        state.connections.remove(&peer);
    }
    let carried_new_streams = state
        .peers
        .get(&peer)
        .is_some_and(|p| p.connection.stable_id() == id);
    if carried_new_streams {
        match survivor {
            // Another verified connection to the peer is still open: it carries them now.
            Some(connection) => {
                let since = shared.env.wall_clock();
                state.peers.insert(peer, Peer { connection, since });
            }
            None => {
                state.peers.remove(&peer);
            }
        }
    }
}

/// Reads a stream's preamble and hands the stream to its port's listener, or refuses it.
async fn answer_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: Address,
    shared: Weak<Shared>,
) {
    let Some(timeout) = shared.upgrade().map(|s| s.config.preamble_timeout) else {
        return;
    };
    let mut raw = [0u8; PREAMBLE_LEN];
    let preamble = match tokio::time::timeout(timeout, recv.read_exact(&mut raw)).await {
        Ok(Ok(())) => Preamble::decode(&raw),
        // A peer that never finishes its preamble only costs this task until the timeout.
        _ => return,
    };
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let preamble = match preamble {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "bad stream preamble");
            return refuse(send, recv, StreamStatus::BadPreamble).await;
        }
    };
    let admitted = shared
        .state()
        .admit(preamble.destination_port, peer, |p| &p.streams);
    drop(shared);
    let sender = match admitted {
        Ok(sender) => sender,
        Err(status) => {
            tracing::debug!(%peer, port = preamble.destination_port, ?status, "stream refused");
            return refuse(send, recv, status).await;
        }
    };
    let Ok(permit) = sender.try_reserve() else {
        return refuse(send, recv, StreamStatus::Busy).await;
    };
    // The answer goes out before the application can write anything after it.
    if send
        .write_all(&[StreamStatus::Accepted as u8])
        .await
        .is_err()
    {
        return;
    }
    permit.send(OverlayStream {
        peer,
        local_port: preamble.destination_port,
        remote_port: preamble.source_port,
        send,
        recv,
    });
}

async fn refuse(mut send: quinn::SendStream, mut recv: quinn::RecvStream, status: StreamStatus) {
    let _ = recv.stop(0u32.into());
    if send.write_all(&[status as u8]).await.is_ok() {
        let _ = send.finish();
        // Let the answer reach the peer before the stream is dropped.
        let _ = tokio::time::timeout(Duration::from_secs(5), send.stopped()).await;
    }
}

async fn serve_datagrams(connection: quinn::Connection, peer: Address, shared: Weak<Shared>) {
    while let Ok(bytes) = connection.read_datagram().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Ok((port, source_port, _)) = decode_datagram(&bytes) else {
            continue;
        };
        let admitted = shared.state().admit(port, peer, |p| &p.datagrams);
        if let Ok(sender) = admitted {
            // Datagrams are unreliable by contract: a full queue drops the newest.
            let _ = sender.try_send(Datagram {
                from: peer,
                source_port,
                payload: bytes.slice(DATAGRAM_HEADER_LEN..),
            });
        }
    }
}

/// Handles every datagram that is not QUIC: STUN and sealed control packets.
async fn control_loop(mut diverted: mpsc::Receiver<Diverted>, shared: Weak<Shared>) {
    while let Some(packet) = diverted.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let reply = match packet.kind {
            PacketKind::Stun => handle_stun(&shared, &packet).map(|r| (packet.from, r.into())),
            PacketKind::Tern(TernType::SealedControl) => {
                handle_control(&shared, &packet).map(|r| (packet.from, r.into()))
            }
            PacketKind::Tern(TernType::Relay) => forward_relayed(&shared, &packet),
            PacketKind::Quic | PacketKind::Unknown => None,
        };
        if let Some((to, reply)) = reply
            && let Err(e) = shared.socket.send_raw(to, &reply).await
        {
            tracing::debug!(%to, error = %e, "control reply not sent");
        }
    }
}

/// The address a connected peer is reached at directly, if it is, and proven (pinned: see
/// `serve_streams`).
fn direct_address(shared: &Shared, peer: Address) -> Option<SocketAddr> {
    // Ask quinn before taking the path lock (see DemuxSocket::paths).
    let synthetic = shared.state().live_connection(peer)?.remote_address();
    let paths = shared.socket.paths();
    match paths.route_for(&synthetic)? {
        Route::Direct(real) if paths.is_pinned_direct(real) => Some(real),
        Route::Direct(_) | Route::Relay { .. } => None,
    }
}

/// Serving as a relay, for frames the socket could not route on its own (peers it has not
/// learnt about lately): looks both peers up, teaches the socket, and forwards the frame
/// unchanged (so never amplified) if its source is a connected peer sending from its
/// verified address (no spoofed sources) and its destination is directly connected too.
fn forward_relayed(shared: &Shared, packet: &Diverted) -> Option<(SocketAddr, Bytes)> {
    let (header, _) = RelayHeader::decode(&packet.data)?;
    for peer in [header.source, header.destination] {
        if let Some(at) = direct_address(shared, peer) {
            shared.socket.learn_relay_route(peer, at);
        }
    }
    match shared.socket.route_relayed(packet.from, &header) {
        Relayed::Forward(to) => Some((to, packet.data.clone())),
        Relayed::Refused | Relayed::Unknown => {
            tracing::debug!(source = %header.source, destination = %header.destination, from = %packet.from, "relay frame dropped");
            None
        }
    }
}

fn handle_stun(shared: &Shared, packet: &Diverted) -> Option<Vec<u8>> {
    if let Some((id, mapped)) = stun::parse_binding_response(&packet.data) {
        if let Some(waiter) = shared.state().stun.remove(&id) {
            let _ = waiter.send(mapped);
        }
        return None;
    }
    stun::answer_binding_request(&packet.data, packet.from)
}

fn handle_control(shared: &Shared, packet: &Diverted) -> Option<Vec<u8>> {
    let (from, _) = peek_addresses(&packet.data).ok()?;
    let keys = shared.state().known.get(&from)?.keys.clone();
    // Sealing and opening happen outside the node's lock: forged packets cost others no wait.
    let refused = |e: ControlError| tracing::debug!(%from, error = %e, "control packet refused");
    let authentic = keys.authenticate(&packet.data).map_err(refused).ok()?;
    let txid = {
        let mut state = shared.state();
        let known = state.known.get_mut(&from)?;
        match known.replay.admit(authentic).map_err(refused).ok()? {
            ControlMessage::Ping { txid } => {
                known.pinged_from = Some(packet.from);
                txid
            }
            ControlMessage::Pong { txid, .. } => {
                let answers = |p: &PendingPing| p.peer == from;
                if state.pings.get(&txid).is_some_and(answers)
                    && let Some(ping) = state.pings.remove(&txid)
                {
                    let _ = ping.answer.send(packet.from);
                }
                return None;
            }
        }
    };
    let counter = shared.next_counter();
    let pong = ControlMessage::Pong {
        txid,
        observed: packet.from,
    };
    Some(keys.seal(counter, &pong))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_network_addresses_are_lan_and_loopback_and_public_are_not() {
        for lan in [
            "10.1.0.2:7440",
            "192.168.1.9:1",
            "172.16.0.1:1",
            "[fd00::1]:1",
        ] {
            assert!(is_lan(lan.parse().unwrap()), "{lan}");
        }
        for other in [
            "127.0.0.1:1",
            "203.0.113.5:1",
            "[2001:db8::1]:1",
            "100.64.0.1:1",
        ] {
            assert!(!is_lan(other.parse().unwrap()), "{other}");
        }
    }
}
