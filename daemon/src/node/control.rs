//! Sealed control packets on the node's socket: pings and path checks, hole-punching
//! probes within their budgets, STUN, and relay forwarding.

use super::*;

/// Probe packets hole punching may send: per peer (a punch to one peer needs about 60 a
/// second) and in total, so that introductions from many identities cannot make this node
/// a packet cannon.
const PROBES_PER_SECOND_PER_PEER: f64 = 100.0;

const PROBE_BURST_PER_PEER: f64 = 200.0;

const PROBES_PER_SECOND: f64 = 2000.0;

const PROBE_BURST: f64 = 4000.0;

pub(super) struct ProbeBudget {
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
/// How often an unanswered STUN request is sent again.
const STUN_RESEND: Duration = Duration::from_millis(300);
/// How often an unanswered ping is sent again (probes and path checks wait less than this, so
/// they send one each).
const PING_RESEND: Duration = Duration::from_millis(1500);

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

/// Handles every datagram that is not QUIC: STUN and sealed control packets.
pub(super) async fn control_loop(mut diverted: mpsc::Receiver<Diverted>, shared: Weak<Shared>) {
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
pub(super) fn direct_address(shared: &Shared, peer: Address) -> Option<SocketAddr> {
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
    if let Some(response) = stun::parse_binding_response(&packet.data) {
        if let Some(waiter) = shared.state().stun.remove(&response.id) {
            let _ = waiter.send(response);
        }
        return None;
    }
    let other = shared.other_port.as_ref();
    let answer = stun::answer_binding_request(&packet.data, packet.from, other.map(|o| o.local))?;
    match (answer.from_other, other) {
        (false, _) => Some(answer.bytes),
        (true, Some(other)) => {
            send_datagram(&*other.socket, packet.from, &answer.bytes);
            None
        }
        (true, None) => None,
    }
}

/// Binds the answer-only STUN socket beside the node's socket (same address, any port).
pub(super) fn bind_other_port(env: &dyn Env, beside: SocketAddr) -> Option<OtherPort> {
    let bound = env
        .bind_udp(SocketAddr::new(beside.ip(), 0), OTHER_PORT_BUFFER)
        .and_then(|b| Ok((b.socket.local_addr()?, b.socket)));
    match bound {
        Ok((local, socket)) => Some(OtherPort { socket, local }),
        Err(e) => {
            tracing::warn!(error = %e, "no second STUN port: peers cannot tell their NAT's kind through this node");
            None
        }
    }
}

/// The second STUN socket's buffers: it only ever holds small Binding requests.
const OTHER_PORT_BUFFER: usize = 64 * 1024;

/// Answers Binding requests on the second STUN socket (never asked to change port again:
/// RFC 5780's requests to it ask for nothing more), and drops everything else.
pub(super) async fn serve_other_port(socket: Arc<dyn quinn::AsyncUdpSocket>) {
    let mut buffer = vec![0u8; 2048];
    loop {
        let (n, from) = match receive_datagram(&*socket, &mut buffer).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "second STUN port: receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if let Some(answer) = stun::answer_binding_request(&buffer[..n], from, None) {
            send_datagram(&*socket, from, &answer.bytes);
        }
    }
}

/// One datagram from a quinn socket (the first segment of a coalesced batch).
async fn receive_datagram(
    socket: &dyn quinn::AsyncUdpSocket,
    buffer: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    std::future::poll_fn(|cx| {
        let mut meta = [quinn::udp::RecvMeta::default()];
        let mut bufs = [std::io::IoSliceMut::new(buffer)];
        std::task::ready!(socket.poll_recv(cx, &mut bufs, &mut meta))?;
        Poll::Ready(Ok((meta[0].len.min(meta[0].stride), meta[0].addr)))
    })
    .await
}

/// Sends one datagram if the socket takes it at once (STUN answers: a lost one is asked
/// again).
fn send_datagram(socket: &dyn quinn::AsyncUdpSocket, to: SocketAddr, data: &[u8]) {
    let transmit = quinn::udp::Transmit {
        destination: to,
        ecn: None,
        contents: data,
        segment_size: None,
        src_ip: None,
    };
    if let Err(e) = socket.try_send(&transmit) {
        tracing::debug!(%to, error = %e, "STUN answer not sent");
    }
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

impl Node {
    /// Lets this node exchange sealed control packets (probes) with `peer` before any
    /// connection exists: the identity comes from a verified record.
    pub fn learn(&self, peer: &PublicIdentity) {
        self.shared.state().learn(&self.shared.identity, peer);
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
        let (keys, to, txid, answer) = {
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
            (keys, to, txid, rx)
        };
        let _forget = ForgetPing { shared, txid };
        let started = Instant::now();
        with_timeout(timeout, async {
            // Sent again while unanswered: a datagram can be lost, and a peer that has just
            // accepted our connection may not know our key for a moment.
            let mut resend = tokio::time::interval(PING_RESEND);
            tokio::pin!(answer);
            loop {
                tokio::select! {
                    answered = &mut answer => {
                        return answered.map_err(|_| ProbeError::ShuttingDown);
                    }
                    _ = resend.tick() => {
                        let packet = keys.seal(shared.next_counter(), &ControlMessage::Ping { txid });
                        shared
                            .socket
                            .send_raw(to, &packet)
                            .await
                            .map_err(ProbeError::Send)?;
                    }
                }
            }
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

    /// Asks a STUN server which address this node's socket appears from (and, with
    /// `change_port`, to answer from its other port), sending again every
    /// [`STUN_RESEND`] until answered or `timeout` passes.
    pub async fn stun(
        &self,
        server: SocketAddr,
        change_port: bool,
        timeout: Duration,
    ) -> Result<stun::BindingResponse, ProbeError> {
        let (id, request) = stun::binding_request(self.shared.env.random_bytes(), change_port);
        let (tx, rx) = oneshot::channel();
        self.shared.state().stun.insert(id, tx);
        let outcome = with_timeout(timeout, async {
            let mut resend = tokio::time::interval(STUN_RESEND);
            tokio::pin!(rx);
            loop {
                tokio::select! {
                    answered = &mut rx => return answered.map_err(|_| ProbeError::ShuttingDown),
                    _ = resend.tick() => self
                        .shared
                        .socket
                        .send_raw(server, &request)
                        .await
                        .map_err(ProbeError::Send)?,
                }
            }
        })
        .await;
        self.shared.state().stun.remove(&id);
        outcome
    }

    /// What kind of NAT this node sits behind, as seen through the STUN server at `server`
    /// (a rendezvous: every node answers STUN on two ports). Takes up to about three
    /// `wait`s; the filtering test goes first, before this node has sent anything to the
    /// server's other port that could open its NAT to it.
    pub async fn discover_nat(
        &self,
        server: SocketAddr,
        wait: Duration,
    ) -> crate::traversal::nat::NatBehaviour {
        use crate::traversal::nat::{Observations, classify};
        let first = self.stun(server, false, wait).await.ok();
        let mut seen = Observations {
            local: Some(self.shared.local_addr),
            interfaces: self.shared.env.interface_addresses(),
            mapped: first.map(|f| f.mapped),
            ..Observations::default()
        };
        if let Some(other) = first.and_then(|f| f.other) {
            seen.other_port_got_in = Some(self.stun(server, true, wait).await.is_ok());
            let other = SocketAddr::new(server.ip(), other.port());
            seen.mapped_other = self.stun(other, false, wait).await.ok().map(|o| o.mapped);
        }
        classify(&seen)
    }
}
