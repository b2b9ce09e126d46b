//! The simulated network. Every datagram sent is traced (virtual time, source, destination,
//! length, as sent) and, unless lost, cut off by a partition or dropped by a NAT, delivered
//! after the link's latency and jitter (ties in the order sent); a socket's inbox holds
//! a bounded number of datagrams, like a kernel's buffer, and drops the rest.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tern_daemon::env::{BoxFuture, LinkListener, LinkStream};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::nat::{Nat, NatConfig, Nats};

/// Datagrams a socket holds unread before it drops new ones.
const INBOX_DATAGRAMS: usize = 4096;
/// Bytes each way of a TCP link's in-memory pipe.
const TCP_PIPE_BYTES: usize = 256 << 10;
/// NATs a datagram may cross on its way out (a site behind a site behind …).
const MAX_STACKED_NATS: usize = 4;
/// Ports handed out for binds to port 0, as a kernel's ephemeral range.
const FIRST_EPHEMERAL_PORT: u16 = 40000;

/// One datagram as it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceEntry {
    /// Virtual time since the network started.
    pub at: Duration,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub len: usize,
}

/// What every datagram meets on its way (one direction).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkModel {
    pub latency: Duration,
    /// Up to this much more, uniformly (datagrams may overtake each other).
    pub jitter: Duration,
    /// The chance, 0 to 1, that a datagram is lost.
    pub loss: f64,
    /// Losses in bursts as well (a Gilbert model: the link goes bad for a while).
    pub bursts: Option<Bursts>,
    /// The chance, 0 to 1, that a datagram arrives twice.
    pub duplicate: f64,
    /// The chance, 0 to 1, that a datagram is held back one more latency (later ones
    /// overtake it).
    pub reorder: f64,
    /// Bytes per second the sending host's uplink carries; datagrams queue behind each
    /// other (0: no limit).
    pub bandwidth: u64,
    /// Datagrams larger than this are dropped (0: no limit).
    pub mtu: usize,
}

/// Bursty loss: each datagram may start a burst, in which every datagram is lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bursts {
    /// The chance, 0 to 1, that a datagram starts a burst.
    pub start: f64,
    /// Datagrams a burst takes, on average.
    pub mean_len: f64,
}

impl LinkModel {
    pub fn latency(latency: Duration) -> Self {
        Self {
            latency,
            jitter: Duration::ZERO,
            loss: 0.0,
            bursts: None,
            duplicate: 0.0,
            reorder: 0.0,
            bandwidth: 0,
            mtu: 0,
        }
    }
}

#[derive(Debug)]
pub struct Network {
    state: Mutex<NetState>,
    /// Wakes the delivery task when a datagram is queued.
    queued: Notify,
    started: Instant,
}

#[derive(Debug)]
struct NetState {
    link: LinkModel,
    /// Hosts whose datagrams meet another link than `link`.
    uplinks: BTreeMap<IpAddr, LinkModel>,
    /// When each bandwidth-limited uplink is free again.
    busy_until: BTreeMap<IpAddr, Instant>,
    /// Hosts that send and receive nothing (crashed).
    down: BTreeSet<IpAddr>,
    /// Loss and jitter draws, from the simulation's seed.
    rng: ChaCha8Rng,
    /// (from, to) host pairs whose datagrams are dropped: partitions, one-way ones included.
    cut: BTreeSet<(IpAddr, IpAddr)>,
    /// Inside a loss burst.
    in_burst: bool,
    sockets: BTreeMap<SocketAddr, Weak<Inbox>>,
    nats: Nats,
    tcp_listeners: BTreeMap<SocketAddr, mpsc::Sender<LinkStream>>,
    in_flight: BinaryHeap<InFlight>,
    sent: u64,
    trace: Vec<TraceEntry>,
    next_port: BTreeMap<IpAddr, u16>,
}

#[derive(Debug)]
struct InFlight {
    deliver_at: Instant,
    /// Send order: the tie-break that keeps delivery order fixed.
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    data: Bytes,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.seq) == (other.deliver_at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    /// Reversed: the heap's top is the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.deliver_at, other.seq).cmp(&(self.deliver_at, self.seq))
    }
}

#[derive(Debug, Default)]
struct Inbox {
    datagrams: Mutex<VecDeque<(SocketAddr, Bytes)>>,
    waker: Mutex<Option<Waker>>,
}

impl Network {
    /// Starts the network's delivery task on the current runtime.
    pub fn start(link: LinkModel, seed: u64) -> Arc<Self> {
        let network = Arc::new(Self {
            state: Mutex::new(NetState {
                link,
                uplinks: BTreeMap::new(),
                busy_until: BTreeMap::new(),
                down: BTreeSet::new(),
                rng: ChaCha8Rng::seed_from_u64(seed),
                cut: BTreeSet::new(),
                in_burst: false,
                sockets: BTreeMap::new(),
                nats: Nats::new(),
                tcp_listeners: BTreeMap::new(),
                in_flight: BinaryHeap::new(),
                sent: 0,
                trace: Vec::new(),
                next_port: BTreeMap::new(),
            }),
            queued: Notify::new(),
            started: Instant::now(),
        });
        // It holds the network until the runtime ends (the simulation with it).
        tokio::spawn(deliver(network.clone()));
        network
    }

    fn state(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().expect("network lock")
    }

    /// What datagrams meet from now on, from every host without a link of its own.
    pub fn set_link(&self, link: LinkModel) {
        self.state().link = link;
    }

    /// What datagrams `host` sends meet from now on.
    pub fn set_uplink(&self, host: IpAddr, link: LinkModel) {
        self.state().uplinks.insert(host, link);
    }

    /// A host that is down sends and receives nothing, as a machine that lost power; up
    /// again, it does.
    pub fn set_down(&self, host: IpAddr, down: bool) {
        let mut state = self.state();
        match down {
            true => state.down.insert(host),
            false => state.down.remove(&host),
        };
    }

    /// Drops every datagram from a host in `from` to a host in `to` (also back, unless
    /// `one_way`) until `heal`.
    pub fn partition(&self, from: &[IpAddr], to: &[IpAddr], one_way: bool) {
        let mut state = self.state();
        for &a in from {
            for &b in to {
                state.cut.insert((a, b));
                if !one_way {
                    state.cut.insert((b, a));
                }
            }
        }
    }

    /// Ends every partition.
    pub fn heal(&self) {
        self.state().cut.clear();
    }

    /// Puts a NAT at `public` in front of the private /24 `inside` (hosts 192.168.x.y, say).
    pub fn add_nat(&self, config: NatConfig, public: std::net::Ipv4Addr, inside: [u8; 3]) {
        self.state()
            .nats
            .insert(public, Nat::new(config, public, inside));
    }

    /// Moves every mapping of the NAT at `public` to a new public port (it rebound): peers
    /// see the inside hosts' flows come from new ports.
    pub fn rebind_nat(&self, public: std::net::Ipv4Addr) {
        if let Some(nat) = self.state().nats.get_mut(&public) {
            nat.rebind();
        }
    }

    /// Virtual time since the network started.
    pub fn elapsed(&self) -> Duration {
        Instant::now() - self.started
    }

    /// Every datagram sent so far.
    pub fn trace(&self) -> Vec<TraceEntry> {
        self.state().trace.clone()
    }

    pub fn bind_udp(self: &Arc<Self>, at: SocketAddr) -> io::Result<Arc<SimSocket>> {
        let mut state = self.state();
        let at = state.assign_port(at, |state, at| {
            state.sockets.get(&at).is_some_and(|s| s.strong_count() > 0)
        })?;
        let inbox = Arc::new(Inbox::default());
        state.sockets.insert(at, Arc::downgrade(&inbox));
        Ok(Arc::new(SimSocket {
            network: self.clone(),
            local: at,
            inbox,
        }))
    }

    pub fn listen_tcp(self: &Arc<Self>, at: SocketAddr) -> io::Result<SimTcpListener> {
        let mut state = self.state();
        let at = state.assign_port(at, |state, at| {
            state.tcp_listeners.get(&at).is_some_and(|l| !l.is_closed())
        })?;
        let (tx, rx) = mpsc::channel(128);
        state.tcp_listeners.insert(at, tx);
        Ok(SimTcpListener {
            accepted: tokio::sync::Mutex::new(rx),
        })
    }

    /// A TCP connection from `from_ip` to a listener at `to`: an in-memory pipe, which
    /// neither latency nor the trace covers yet.
    pub async fn connect_tcp(&self, from_ip: IpAddr, to: SocketAddr) -> io::Result<LinkStream> {
        let refused = || io::Error::from(io::ErrorKind::ConnectionRefused);
        let (listener, from) = {
            let mut state = self.state();
            // No port forwarding: a site's hosts (and its NAT) take no connections from
            // outside it.
            let site = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => state
                    .site_of(v4)
                    .or(state.nats.contains_key(&v4).then_some(v4)),
                IpAddr::V6(_) => None,
            };
            let to_site = site(to.ip());
            if to_site.is_some() && to_site != site(from_ip) {
                return Err(refused());
            }
            let listener = state.tcp_listeners.get(&to).cloned();
            let from = state.assign_port(SocketAddr::new(from_ip, 0), |_, _| false)?;
            (listener, from)
        };
        let listener = listener.ok_or_else(refused)?;
        let (ours, theirs) = tokio::io::duplex(TCP_PIPE_BYTES);
        let theirs = LinkStream {
            io: Box::new(theirs),
            remote: from,
        };
        listener.send(theirs).await.map_err(|_| refused())?;
        Ok(LinkStream {
            io: Box::new(ours),
            remote: to,
        })
    }

    fn send(&self, from: SocketAddr, to: SocketAddr, data: Bytes) {
        let now = Instant::now();
        let mut state = self.state();
        state.trace.push(TraceEntry {
            at: now - self.started,
            from,
            to,
            len: data.len(),
        });
        let sender = from.ip();
        let link = state.uplinks.get(&sender).copied().unwrap_or(state.link);
        if state.down.contains(&sender) || (link.mtu > 0 && data.len() > link.mtu) {
            return;
        }
        let Some((from, to)) = state.route(now, from, to) else {
            return;
        };
        if state.cut.contains(&(sender, to.ip())) || state.lost(link) {
            return;
        }
        // A limited uplink sends one datagram after another.
        let sent_at = match link.bandwidth {
            0 => now,
            rate => {
                let free = state.busy_until.get(&sender).map_or(now, |&t| t.max(now));
                let done = free + Duration::from_secs_f64(data.len() as f64 / rate as f64);
                state.busy_until.insert(sender, done);
                done
            }
        };
        let copies = match link.duplicate > 0.0 && unit(&mut state.rng) < link.duplicate {
            true => 2,
            false => 1,
        };
        for _ in 0..copies {
            let jitter = match link.jitter.is_zero() {
                true => Duration::ZERO,
                false => link.jitter.mul_f64(unit(&mut state.rng)),
            };
            let held_back = match link.reorder > 0.0 && unit(&mut state.rng) < link.reorder {
                true => link.latency.max(Duration::from_millis(1)),
                false => Duration::ZERO,
            };
            let seq = state.sent;
            state.sent += 1;
            state.in_flight.push(InFlight {
                deliver_at: sent_at + link.latency + jitter + held_back,
                seq,
                from,
                to,
                data: data.clone(),
            });
        }
        drop(state);
        self.queued.notify_one();
    }
}

impl NetState {
    /// Whether the link loses the next datagram: at random, or in a burst.
    fn lost(&mut self, link: LinkModel) -> bool {
        if let Some(bursts) = link.bursts {
            if self.in_burst {
                self.in_burst = unit(&mut self.rng) >= 1.0 / bursts.mean_len.max(1.0);
                return true;
            }
            if unit(&mut self.rng) < bursts.start {
                self.in_burst = true;
                return true;
            }
        }
        link.loss > 0.0 && unit(&mut self.rng) < link.loss
    }

    /// The public address of the NAT whose site `ip` is in.
    fn site_of(&self, ip: std::net::Ipv4Addr) -> Option<std::net::Ipv4Addr> {
        self.nats
            .values()
            .find(|n| n.is_inside(ip))
            .map(|n| n.public)
    }

    /// Where a datagram sent from `from` to `to` arrives, through the NATs on its way, as
    /// (source, destination) at arrival; None when it is dropped. It climbs out through the
    /// sender's NATs (stacked ones too: a home router behind a carrier-grade NAT) until it
    /// is in the network the destination address belongs to, then goes in through the NATs
    /// whose public address it is sent to. Turning round in a NAT it came out of takes a
    /// hairpinning NAT.
    fn route(
        &mut self,
        now: Instant,
        from: SocketAddr,
        to: SocketAddr,
    ) -> Option<(SocketAddr, SocketAddr)> {
        let (IpAddr::V4(from_ip), IpAddr::V4(to_ip)) = (from.ip(), to.ip()) else {
            return Some((from, to));
        };
        let destination_network = self.site_of(to_ip);
        let (mut from, mut network, mut climbed) = (from, self.site_of(from_ip), Vec::new());
        while network != destination_network {
            // On the public internet, the destination is inside someone else's site.
            let nat = network?;
            from = self.nats.get_mut(&nat)?.outbound(now, from, to)?;
            climbed.push(nat);
            network = self.site_of(nat);
            if climbed.len() > MAX_STACKED_NATS {
                return None;
            }
        }
        let mut to = to;
        while let IpAddr::V4(ip) = to.ip()
            && let Some(nat) = self.nats.get_mut(&ip)
        {
            if climbed.contains(&ip) && !nat.config.hairpin {
                return None;
            }
            to = nat.inbound(now, from, to.port())?;
        }
        Some((from, to))
    }

    /// `at` itself, or for port 0 the next free ephemeral port of its IP.
    fn assign_port(
        &mut self,
        at: SocketAddr,
        taken: impl Fn(&Self, SocketAddr) -> bool,
    ) -> io::Result<SocketAddr> {
        if at.port() != 0 {
            return match taken(self, at) {
                true => Err(io::Error::from(io::ErrorKind::AddrInUse)),
                false => Ok(at),
            };
        }
        for _ in 0..u16::MAX {
            let next = self
                .next_port
                .entry(at.ip())
                .or_insert(FIRST_EPHEMERAL_PORT);
            let candidate = SocketAddr::new(at.ip(), *next);
            *next = next.checked_add(1).unwrap_or(FIRST_EPHEMERAL_PORT);
            if !taken(self, candidate) {
                return Ok(candidate);
            }
        }
        Err(io::Error::from(io::ErrorKind::AddrNotAvailable))
    }
}

/// A uniform draw in [0, 1).
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Hands each datagram to its destination's inbox when its time comes.
async fn deliver(net: Arc<Network>) {
    loop {
        let now = Instant::now();
        let mut next = None;
        let mut woken = Vec::new();
        {
            let mut state = net.state();
            while let Some(top) = state.in_flight.peek() {
                if top.deliver_at > now {
                    next = Some(top.deliver_at);
                    break;
                }
                let packet = state.in_flight.pop().expect("peeked");
                if state.down.contains(&packet.to.ip()) {
                    continue;
                }
                let Some(inbox) = state.sockets.get(&packet.to).and_then(Weak::upgrade) else {
                    continue;
                };
                let mut datagrams = inbox.datagrams.lock().expect("inbox lock");
                if datagrams.len() < INBOX_DATAGRAMS {
                    datagrams.push_back((packet.from, packet.data));
                }
                drop(datagrams);
                if let Some(waker) = inbox.waker.lock().expect("waker lock").take() {
                    woken.push(waker);
                }
            }
        }
        woken.into_iter().for_each(Waker::wake);
        let queued = net.queued.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(at) => {}
                    _ = queued => {}
                }
            }
            None => queued.await,
        }
    }
}

/// A UDP socket on the simulated network; unbound when dropped.
#[derive(Debug)]
pub struct SimSocket {
    network: Arc<Network>,
    local: SocketAddr,
    inbox: Arc<Inbox>,
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        for datagram in transmit.contents.chunks(segment) {
            self.network.send(
                self.local,
                transmit.destination,
                Bytes::copy_from_slice(datagram),
            );
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut datagrams = self.inbox.datagrams.lock().expect("inbox lock");
        if datagrams.is_empty() {
            *self.inbox.waker.lock().expect("waker lock") = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut n = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some((from, data)) = datagrams.pop_front() else {
                break;
            };
            let len = data.len().min(buf.len());
            buf[..len].copy_from_slice(&data[..len]);
            *meta = RecvMeta {
                addr: from,
                len,
                stride: len,
                ecn: None,
                dst_ip: Some(self.local.ip()),
            };
            n += 1;
        }
        Poll::Ready(Ok(n))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        // No path MTU discovery on a network without an MTU.
        true
    }
}

pub struct SimTcpListener {
    accepted: tokio::sync::Mutex<mpsc::Receiver<LinkStream>>,
}

impl LinkListener for SimTcpListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move {
            self.accepted
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::run_paused;

    /// Sends `count` datagrams from a to b under `link`; how many arrived.
    fn delivered(link: LinkModel, count: usize) -> usize {
        run_paused(Duration::from_secs(10), async {
            let network = Network::start(link, 1);
            let a = network.bind_udp("10.0.0.1:1".parse().unwrap()).unwrap();
            let b = network.bind_udp("10.0.0.2:1".parse().unwrap()).unwrap();
            for _ in 0..count {
                network.send(a.local, b.local, Bytes::from_static(b"x"));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            b.inbox.datagrams.lock().unwrap().len()
        })
    }

    #[test]
    fn random_and_bursty_loss_and_duplication_come_at_their_rates() {
        let base = LinkModel::latency(Duration::from_millis(5));
        assert_eq!(delivered(base, 2000), 2000);
        let lossy = delivered(LinkModel { loss: 0.1, ..base }, 2000);
        assert!((1700..1900).contains(&lossy), "{lossy}");
        let bursty = LinkModel {
            bursts: Some(Bursts {
                start: 0.01,
                mean_len: 10.0,
            }),
            ..base
        };
        // About 1 in 11 datagrams starts or is in a burst: some 9 % lost.
        let got = delivered(bursty, 2000);
        assert!((1700..1950).contains(&got), "{got}");
        let doubled = delivered(
            LinkModel {
                duplicate: 0.5,
                ..base
            },
            1000,
        );
        assert!((1400..1600).contains(&doubled), "{doubled}");
    }

    #[test]
    fn a_one_way_partition_cuts_one_direction_until_healed() {
        run_paused(Duration::from_secs(10), async {
            let network = Network::start(LinkModel::latency(Duration::from_millis(5)), 1);
            let a = network.bind_udp("10.0.0.1:1".parse().unwrap()).unwrap();
            let b = network.bind_udp("10.0.0.2:1".parse().unwrap()).unwrap();
            network.partition(&[a.local.ip()], &[b.local.ip()], true);
            network.send(a.local, b.local, Bytes::from_static(b"lost"));
            network.send(b.local, a.local, Bytes::from_static(b"kept"));
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(b.inbox.datagrams.lock().unwrap().len(), 0);
            assert_eq!(a.inbox.datagrams.lock().unwrap().len(), 1);
            network.heal();
            network.send(a.local, b.local, Bytes::from_static(b"healed"));
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(b.inbox.datagrams.lock().unwrap().len(), 1);
        });
    }

    #[test]
    fn only_a_hairpinning_nat_lets_its_hosts_meet_at_its_public_address() {
        for hairpin in [false, true] {
            let got = run_paused(Duration::from_secs(10), async move {
                let network = Network::start(LinkModel::latency(Duration::from_millis(5)), 1);
                let public = std::net::Ipv4Addr::new(203, 0, 113, 101);
                let nat = NatConfig {
                    hairpin,
                    ..NatConfig::full_cone()
                };
                network.add_nat(nat, public, [192, 168, 1]);
                let one = network.bind_udp("192.168.1.2:1".parse().unwrap()).unwrap();
                let two = network.bind_udp("192.168.1.3:2".parse().unwrap()).unwrap();
                // Two's mapping keeps its port: 203.0.113.101:2.
                network.send(two.local, "203.0.113.1:9".parse().unwrap(), Bytes::new());
                network.send(one.local, "203.0.113.101:2".parse().unwrap(), Bytes::new());
                tokio::time::sleep(Duration::from_millis(10)).await;
                two.inbox.datagrams.lock().unwrap().len()
            });
            assert_eq!(got, usize::from(hairpin), "hairpin {hairpin}");
        }
    }

    #[test]
    fn a_slow_uplink_spaces_datagrams_and_a_small_mtu_drops_large_ones() {
        run_paused(Duration::from_secs(10), async {
            let link = LinkModel {
                bandwidth: 1000,
                mtu: 500,
                ..LinkModel::latency(Duration::from_millis(5))
            };
            let network = Network::start(link, 1);
            let a = network.bind_udp("10.0.0.1:1".parse().unwrap()).unwrap();
            let b = network.bind_udp("10.0.0.2:1".parse().unwrap()).unwrap();
            for _ in 0..4 {
                network.send(a.local, b.local, Bytes::from(vec![0; 250]));
            }
            network.send(a.local, b.local, Bytes::from(vec![0; 501]));
            // 250 bytes at 1000 B/s: one every 250 ms.
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(b.inbox.datagrams.lock().unwrap().len(), 2);
            tokio::time::sleep(Duration::from_millis(600)).await;
            assert_eq!(
                b.inbox.datagrams.lock().unwrap().len(),
                4,
                "the 501-byte one dropped"
            );
        });
    }

    #[test]
    fn a_host_that_is_down_sends_and_receives_nothing() {
        run_paused(Duration::from_secs(10), async {
            let network = Network::start(LinkModel::latency(Duration::from_millis(5)), 1);
            let a = network.bind_udp("10.0.0.1:1".parse().unwrap()).unwrap();
            let b = network.bind_udp("10.0.0.2:1".parse().unwrap()).unwrap();
            network.set_down(b.local.ip(), true);
            network.send(a.local, b.local, Bytes::new());
            network.send(b.local, a.local, Bytes::new());
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(b.inbox.datagrams.lock().unwrap().len(), 0);
            assert_eq!(a.inbox.datagrams.lock().unwrap().len(), 0);
            network.set_down(b.local.ip(), false);
            network.send(a.local, b.local, Bytes::new());
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(b.inbox.datagrams.lock().unwrap().len(), 1);
        });
    }

    #[test]
    fn a_host_behind_two_stacked_nats_is_seen_at_the_outer_one_and_answered() {
        run_paused(Duration::from_secs(10), async {
            let network = Network::start(LinkModel::latency(Duration::from_millis(5)), 1);
            let carrier = std::net::Ipv4Addr::new(198, 51, 100, 9);
            network.add_nat(NatConfig::home_router(), carrier, [10, 9, 0]);
            // The home router's own public address is inside the carrier's network.
            network.add_nat(
                NatConfig::home_router(),
                std::net::Ipv4Addr::new(10, 9, 0, 2),
                [10, 1, 1],
            );
            let host = network.bind_udp("10.1.1.2:7440".parse().unwrap()).unwrap();
            let server = network.bind_udp("203.0.113.1:9".parse().unwrap()).unwrap();
            network.send(host.local, server.local, Bytes::from_static(b"out"));
            tokio::time::sleep(Duration::from_millis(10)).await;
            let (seen, _) = server.inbox.datagrams.lock().unwrap().pop_front().unwrap();
            assert_eq!(
                seen.ip(),
                std::net::IpAddr::from(carrier),
                "seen at the outer NAT"
            );
            network.send(server.local, seen, Bytes::from_static(b"back"));
            tokio::time::sleep(Duration::from_millis(10)).await;
            let (from, _) = host.inbox.datagrams.lock().unwrap().pop_front().unwrap();
            assert_eq!(from, server.local, "the answer comes in through both");
        });
    }
}
