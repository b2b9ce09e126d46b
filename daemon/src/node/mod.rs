//! `Node`: one identity, one UDP socket, one QUIC endpoint. It keeps one verified connection
//! per peer, carries overlay streams and datagrams to virtual ports, and answers STUN and
//! sealed control packets (ping) on the same socket.
//!
//! Shape: tasks own the I/O (endpoint accept loop, one control-packet loop, two loops per
//! connection); all shared facts sit in one `State` behind a mutex that is never held across
//! an `.await`. `connections.rs` makes and accepts connections, `ports.rs` carries streams
//! and datagrams to virtual ports, `control.rs` the sealed control packets (pings, probes,
//! STUN, relay forwarding); this file holds the state they share and the node's lifecycle.
//! Which path a connection takes (direct or relayed) is the path table's
//! (`transport::paths`); when to punch and when to move is `traversal`'s.

mod connections;
mod control;
mod errors;
mod ports;

pub use connections::{CLOSE_TOO_MANY, CLOSE_UNWANTED};
pub use errors::{DatagramError, DialError, Dialled, ExchangeError, ListenError, ProbeError};
pub use ports::{Access, Datagram, Listener, OverlayStream};

use connections::{accept_links, accept_loop};
use control::{ProbeBudget, bind_other_port, control_loop, direct_address};
use ports::{refuse_uni_streams, serve_datagrams, serve_streams};

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
            relay_packets_per_second: 200_000.0,
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
    stun: HashMap<stun::TransactionId, oneshot::Sender<stun::BindingResponse>>,
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
    /// The second, answer-only STUN socket (see [`control::serve_other_port`]); None if it
    /// could not be bound.
    other_port: Option<OtherPort>,
}

/// A UDP socket that only answers STUN, so that peers can tell what kind of NAT they sit
/// behind (`transport::stun`).
struct OtherPort {
    socket: Arc<dyn quinn::AsyncUdpSocket>,
    local: SocketAddr,
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
        let other_port = bind_other_port(&*env, local_addr);
        let shared = Arc::new(Shared {
            other_port,
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
        if let Some(other) = &shared.other_port {
            shared
                .tasks
                .spawn(control::serve_other_port(other.socket.clone()));
        }
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
