//! Making and accepting verified connections: dialling (over UDP, a relay or a TCP link),
//! the endpoint's accept loop with its per-source limits, TCP links, and registering a
//! verified connection.

use super::*;

/// Records a verified connection and starts serving it.
pub(super) fn register(shared: &Arc<Shared>, verified: Verified) {
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

pub(super) async fn accept_links(listener: Box<dyn LinkListener>, shared: Weak<Shared>) {
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
pub(super) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Weak<Shared>,
    handshakes: Arc<Semaphore>,
) {
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

impl Node {
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

    pub(super) async fn dial(
        &self,
        expected: Option<Address>,
        at: Route,
    ) -> Result<Address, DialError> {
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
}
