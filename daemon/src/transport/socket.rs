//! The node's one UDP socket, as quinn's `AsyncUdpSocket`: QUIC passes through (with real
//! addresses swapped for the synthetic ones of [`PathTable`]); STUN and tern packets are
//! sorted out by their first byte (SPEC §4) and handed to the node on a bounded channel.
//! quinn-udp's GSO/GRO batching is kept: a received batch is classified per segment.
//!
//! Relay routes: QUIC packets for a relayed path leave wrapped in relay frames to the relay;
//! relay frames addressed to this node are unwrapped and handed to quinn as packets from
//! that relayed path's synthetic address. Frames for other nodes go to the node (which may
//! be serving as a relay).
//!
//! TCP links, for networks that block UDP: a TCP connection carries datagrams, each behind
//! its length (u16). A link stands in for a UDP address with an address of its own
//! ([`link_address`]), and what arrives on it is sorted exactly like what arrives on the UDP
//! socket; so QUIC, sealed control packets and relay frames all cross it unchanged.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tern_proto::Address;
use tern_proto::packet::{PacketKind, RelayHeader, TernType, classify};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::paths::{PathTable, Route, canonical, is_link, link_address, source_key};
use crate::env::LinkStream;
use crate::ratelimit::RateLimiter;
use crate::tasks::Tasks;

/// Datagrams kept waiting for the node's control task before new ones are dropped.
const DIVERTED_QUEUE: usize = 4096;
/// Non-QUIC packets (STUN, control, relay frames the node must look up) one source may queue
/// for the node each second: a flood from one host cannot crowd the queue for everyone.
const DIVERTED_PER_SOURCE_PER_SECOND: f64 = 400.0;
/// QUIC packets that did not come from the UDP socket (unwrapped relay frames, TCP links)
/// kept waiting for quinn before new ones are dropped.
const INJECTED_QUEUE: usize = 1024;
/// Datagrams waiting to be written to one TCP link before new ones are dropped.
const LINK_QUEUE: usize = 1024;
/// TCP links at once; more are refused.
pub const MAX_LINKS: usize = 1024;
/// TCP links from one IP address at once (many nodes may sit behind one NAT).
pub const MAX_LINKS_PER_IP: usize = 64;
/// A link must carry its first datagram this soon, and then one at least this often (QUIC
/// keep-alives come every 15 s), or it is closed: idle links cannot fill the table.
pub const LINK_FIRST_DATAGRAM: std::time::Duration = std::time::Duration::from_secs(10);
pub const LINK_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// A datagram that is not QUIC.
#[derive(Debug)]
pub struct Diverted {
    pub kind: PacketKind,
    pub from: SocketAddr,
    pub data: Bytes,
}

/// Counters of what the socket dropped, for `status` and tests.
#[derive(Debug, Default)]
pub struct SocketStats {
    pub unknown_dropped: AtomicU64,
    pub diverted_dropped: AtomicU64,
    pub unroutable_dropped: AtomicU64,
    pub relayed_dropped: AtomicU64,
    pub links_refused: AtomicU64,
    pub relay_rate_limited: AtomicU64,
    pub diverted_rate_limited: AtomicU64,
}

/// How long a relay trusts what it learnt of where a peer is, before asking the node again.
const RELAY_ROUTE_FRESH: std::time::Duration = std::time::Duration::from_secs(1);
/// Relay routes kept at once; past this, stale ones are forgotten.
const MAX_RELAY_ROUTES: usize = 4096;

/// Serving as a relay: where each connected peer is reached (as the node verified it), and
/// the per-peer rate limit. Frames between peers known here are forwarded as they arrive,
/// without leaving the receive path; others go to the node, which looks the peers up.
#[derive(Debug)]
struct Relaying {
    routes: HashMap<Address, (SocketAddr, tokio::time::Instant)>,
    limiter: RateLimiter,
    swept: Option<tokio::time::Instant>,
}

/// What a relay does with a frame for another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relayed {
    Forward(SocketAddr),
    /// Its source is not where that peer is connected from (spoofed), or over its rate.
    Refused,
    /// A peer not looked up lately: ask the node.
    Unknown,
}

#[derive(Debug)]
struct Link {
    frames: mpsc::Sender<Bytes>,
    /// The TCP peer's address, for display and for telling a node where it is seen from.
    remote: SocketAddr,
}

#[derive(Debug)]
pub struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    inner_ipv6: bool,
    /// This node's address: the source of the relay frames it sends.
    me: Address,
    paths: Mutex<PathTable>,
    /// QUIC packets for quinn from elsewhere than the UDP socket: (synthetic source, packet).
    injected: Mutex<VecDeque<(SocketAddr, Bytes)>>,
    /// quinn's receive task, woken when a packet is injected from outside its poll.
    recv_waker: Mutex<Option<Waker>>,
    links: Mutex<HashMap<SocketAddr, Link>>,
    next_link: AtomicU64,
    relaying: Mutex<Relaying>,
    diverted: mpsc::Sender<Diverted>,
    diverted_budget: Mutex<RateLimiter<std::net::IpAddr>>,
    pub stats: SocketStats,
    /// The node's tasks: each link's reader and writer are among them.
    tasks: Arc<Tasks>,
}

/// What sorting did with one received datagram.
enum Sorted {
    /// A QUIC packet from a direct path: the caller hands it to quinn.
    Quic,
    /// A relay frame for another node, to be sent on unchanged to this address (the caller
    /// sends runs of them as one batch).
    Forward(SocketAddr),
    /// Taken care of (diverted, unwrapped and queued, or dropped).
    Taken,
}

/// The most one UDP send may carry (a GSO batch is one UDP datagram to the kernel).
const MAX_SEND_BYTES: usize = 65_507;

/// Consecutive segments of a received batch going to one address: `buf[start..end]`.
struct Run {
    to: SocketAddr,
    start: usize,
    end: usize,
}

thread_local! {
    /// Where a transmit for a relayed path is wrapped, frame by frame: reused, so relaying
    /// allocates nothing per packet.
    static RELAY_FRAMES: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl DemuxSocket {
    /// Wraps a bound socket for quinn and for the node's own packets.
    pub fn new(
        inner: Arc<dyn AsyncUdpSocket>,
        me: Address,
        relay_packets_per_second: f64,
        tasks: Arc<Tasks>,
    ) -> io::Result<(Arc<Self>, mpsc::Receiver<Diverted>)> {
        let inner_ipv6 = inner.local_addr()?.is_ipv6();
        let (tx, rx) = mpsc::channel(DIVERTED_QUEUE);
        let socket = Arc::new(Self {
            inner,
            inner_ipv6,
            me,
            paths: Mutex::new(PathTable::default()),
            injected: Mutex::new(VecDeque::new()),
            recv_waker: Mutex::new(None),
            links: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(0),
            relaying: Mutex::new(Relaying {
                routes: HashMap::new(),
                limiter: RateLimiter::new(relay_packets_per_second, relay_packets_per_second),
                swept: None,
            }),
            diverted: tx,
            diverted_budget: Mutex::new(RateLimiter::new(
                DIVERTED_PER_SOURCE_PER_SECOND,
                2.0 * DIVERTED_PER_SOURCE_PER_SECOND,
            )),
            stats: SocketStats::default(),
            tasks,
        });
        Ok((socket, rx))
    }

    /// The path table. quinn's connection drivers take this lock inside their own (in
    /// `try_send`), so never call into a quinn connection while holding it.
    pub fn paths(&self) -> MutexGuard<'_, PathTable> {
        self.paths.lock().expect("path table lock poisoned")
    }

    /// The real local address (quinn is shown an IPv6 form of it; see `local_addr`).
    pub fn real_local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr().map(canonical)
    }

    fn outbound(&self, real: SocketAddr) -> SocketAddr {
        match real {
            SocketAddr::V4(v4) if self.inner_ipv6 => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            other => other,
        }
    }

    /// Sends one non-QUIC datagram (STUN, tern control) to a real address.
    pub async fn send_raw(self: &Arc<Self>, to: SocketAddr, data: &[u8]) -> io::Result<()> {
        if is_link(&to) {
            return self.send_on_link(to, data, None);
        }
        let transmit = Transmit {
            destination: self.outbound(canonical(to)),
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        };
        // The poller is made only when the socket is full: most sends go out at once.
        let mut poller = None;
        loop {
            match self.inner.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let poller =
                        poller.get_or_insert_with(|| self.inner.clone().create_io_poller());
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
                }
                other => return other,
            }
        }
    }

    /// Sorts one received buffer (one datagram, or a GRO batch of segments `stride` apart):
    /// diverts what is not QUIC, maps the sender for quinn, forwards relay frames for others.
    fn sort<'a>(
        &'a self,
        meta: &mut RecvMeta,
        buf: &mut [u8],
        paths: &mut Option<MutexGuard<'a, PathTable>>,
    ) {
        let stride = match meta.stride {
            0 => meta.len,
            stride => stride,
        }
        .max(1);
        let from = canonical(meta.addr);
        let buf = &mut buf[..meta.len];
        if self.unwrap_in_place(meta, buf, stride, from, paths) {
            return;
        }
        let most_forwarded = self
            .inner
            .max_transmit_segments()
            .min(MAX_SEND_BYTES / stride);
        let (mut quic, mut run) = (false, None::<Run>);
        for start in (0..buf.len()).step_by(stride) {
            let end = (start + stride).min(buf.len());
            let sorted = self.sort_one(from, &buf[start..end], paths);
            let extends = |run: &Run| {
                matches!(sorted, Sorted::Forward(to) if to == run.to)
                    && (end - run.start).div_ceil(stride) <= most_forwarded.max(1)
            };
            if let Some(ended) = run.take_if(|run| !extends(run)) {
                self.forward_run(&mut buf[ended.start..ended.end], stride, ended.to);
            }
            match sorted {
                Sorted::Quic => quic = true,
                Sorted::Forward(to) => run.get_or_insert(Run { to, start, end }).end = end,
                Sorted::Taken => hide_from_quinn(&mut buf[start..end]),
            }
        }
        if let Some(ended) = run {
            self.forward_run(&mut buf[ended.start..ended.end], stride, ended.to);
        }
        if quic {
            let table = paths.get_or_insert_with(|| self.paths());
            meta.addr = table.synthetic_for(Route::Direct(from));
        } else {
            meta.len = 0;
        }
    }

    /// A batch that is all relay frames for this node from one peer (what a relayed path
    /// brings) is unwrapped where it lies, so quinn reads the packets from the receive buffer
    /// with no copy or queue between; false leaves the batch to be sorted frame by frame.
    fn unwrap_in_place<'a>(
        &'a self,
        meta: &mut RecvMeta,
        buf: &mut [u8],
        stride: usize,
        from: SocketAddr,
        paths: &mut Option<MutexGuard<'a, PathTable>>,
    ) -> bool {
        const HEADER: usize = RelayHeader::LEN;
        if stride <= HEADER || classify(buf) != PacketKind::Tern(TernType::Relay) {
            return false;
        }
        let mut source = None;
        for frame in buf.chunks(stride) {
            match RelayHeader::decode(frame) {
                Some((header, _))
                    if header.destination == self.me
                        && source.is_none_or(|peer| peer == header.source) =>
                {
                    source = Some(header.source);
                }
                _ => return false,
            }
        }
        let Some(peer) = source else {
            return false;
        };
        let table = paths.get_or_insert_with(|| self.paths());
        // Only a node this one is connected to relays to it (the frame-by-frame path counts
        // the drop).
        if !table.is_pinned_direct(from) {
            return false;
        }
        meta.addr = table.synthetic_for(Route::Relay { relay: from, peer });
        let mut unwrapped = 0;
        for start in (0..buf.len()).step_by(stride) {
            let end = (start + stride).min(buf.len());
            buf.copy_within(start + HEADER..end, unwrapped);
            unwrapped += end - start - HEADER;
        }
        meta.len = unwrapped;
        meta.stride = stride - HEADER;
        true
    }

    /// Sends consecutive relay frames (`stride` apart) on to one address as one batch,
    /// straight from the receive buffer, then hides them from quinn.
    fn forward_run(&self, frames: &mut [u8], stride: usize, to: SocketAddr) {
        self.forward(frames, (frames.len() > stride).then_some(stride), to);
        for frame in frames.chunks_mut(stride) {
            hide_from_quinn(frame);
        }
    }

    /// Sends relay frames for another node on unchanged. A full socket loses them, which
    /// QUIC recovers from.
    fn forward(&self, frames: &[u8], segment_size: Option<usize>, to: SocketAddr) {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents: frames,
            segment_size,
            src_ip: None,
        };
        if self.send_to(to, &transmit).is_err() {
            let lost = frames
                .len()
                .div_ceil(segment_size.unwrap_or(frames.len()).max(1));
            self.stats
                .relayed_dropped
                .fetch_add(lost as u64, Ordering::Relaxed);
        }
    }

    /// Sorts one datagram from `from` (a UDP address or a link).
    fn sort_one<'a>(
        &'a self,
        from: SocketAddr,
        segment: &[u8],
        paths: &mut Option<MutexGuard<'a, PathTable>>,
    ) -> Sorted {
        let kind = classify(segment);
        match kind {
            PacketKind::Quic => return Sorted::Quic,
            PacketKind::Unknown => {
                self.stats.unknown_dropped.fetch_add(1, Ordering::Relaxed);
            }
            PacketKind::Tern(TernType::Relay) => match RelayHeader::decode(segment) {
                Some((header, packet)) if header.destination == self.me => {
                    let table = paths.get_or_insert_with(|| self.paths());
                    // Only a node this one is connected to relays to it: anyone else could
                    // make up sources without end.
                    if table.is_pinned_direct(from) {
                        let synthetic = table.synthetic_for(Route::Relay {
                            relay: from,
                            peer: header.source,
                        });
                        self.inject(synthetic, Bytes::copy_from_slice(packet));
                    } else {
                        self.stats
                            .unroutable_dropped
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some((header, _)) => match self.route_relayed(from, &header) {
                    Relayed::Forward(to) => return Sorted::Forward(to),
                    Relayed::Refused => {}
                    Relayed::Unknown => self.divert(kind, from, segment, paths),
                },
                None => self.divert(kind, from, segment, paths),
            },
            PacketKind::Tern(_) | PacketKind::Stun => self.divert(kind, from, segment, paths),
        }
        Sorted::Taken
    }

    /// Queues a datagram for the node's control task, within its source's budget.
    fn divert<'a>(
        &'a self,
        kind: PacketKind,
        from: SocketAddr,
        segment: &[u8],
        paths: &mut Option<MutexGuard<'a, PathTable>>,
    ) {
        // A TCP link counts against its peer's IP, so many links buy no more budget.
        // (Links arrive one datagram at a time, with the path lock not yet taken.)
        let source = match is_link(&from) {
            true => source_key(self.link_remote(&from).unwrap_or(from)),
            false => source_key(from),
        };
        // Connected peers on their proven paths are not budgeted with strangers: a flood
        // from many sources cannot starve their pings, pongs and relay frames.
        let proven = paths
            .get_or_insert_with(|| self.paths())
            .is_pinned_direct(from);
        let mut budget = self.diverted_budget.lock().expect("diverted budget lock");
        if !proven && !budget.allow(tokio::time::Instant::now(), source) {
            self.stats
                .diverted_rate_limited
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        drop(budget);
        let diverted = Diverted {
            kind,
            from,
            data: Bytes::copy_from_slice(segment),
        };
        if self.diverted.try_send(diverted).is_err() {
            self.stats.diverted_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Serving as a relay: what to do with a frame that arrived from `from`.
    pub fn route_relayed(&self, from: SocketAddr, header: &RelayHeader) -> Relayed {
        let mut relaying = self.relaying.lock().expect("relaying lock");
        let now = tokio::time::Instant::now();
        let fresh = |peer: Address| {
            relaying
                .routes
                .get(&peer)
                .filter(|(_, since)| now.duration_since(*since) < RELAY_ROUTE_FRESH)
                .map(|(at, _)| *at)
        };
        let (source, destination) = (fresh(header.source), fresh(header.destination));
        match (source, destination) {
            (Some(source), _) if source != from => Relayed::Refused,
            (Some(_), Some(to)) => {
                if relaying.limiter.allow(now, header.source) {
                    Relayed::Forward(to)
                } else {
                    self.stats
                        .relay_rate_limited
                        .fetch_add(1, Ordering::Relaxed);
                    Relayed::Refused
                }
            }
            _ => Relayed::Unknown,
        }
    }

    /// Notes where the node verified that `peer` is connected from (for relaying).
    pub fn learn_relay_route(&self, peer: Address, at: SocketAddr) {
        let mut relaying = self.relaying.lock().expect("relaying lock");
        let now = tokio::time::Instant::now();
        if relaying.routes.len() >= MAX_RELAY_ROUTES && !relaying.routes.contains_key(&peer) {
            // A sweep at most once per freshness period: never a scan per frame.
            if relaying
                .swept
                .is_none_or(|at| now.duration_since(at) >= RELAY_ROUTE_FRESH)
            {
                relaying.swept = Some(now);
                relaying
                    .routes
                    .retain(|_, (_, since)| now.duration_since(*since) < RELAY_ROUTE_FRESH);
            }
            if relaying.routes.len() >= MAX_RELAY_ROUTES {
                // The node still forwards such frames itself (`node::forward_relayed`).
                return;
            }
        }
        relaying.routes.insert(peer, (at, now));
    }

    /// Queues a QUIC packet for quinn as coming from `synthetic`.
    fn inject(&self, synthetic: SocketAddr, packet: Bytes) {
        let mut injected = self.injected.lock().expect("injected queue lock");
        if injected.len() < INJECTED_QUEUE {
            injected.push_back((synthetic, packet));
        } else {
            self.stats.relayed_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Carries datagrams over `stream` until it ends (each framed as `length u16 || datagram`,
    /// see [`read_link_datagram`]); returns the link's address.
    pub fn add_link(self: &Arc<Self>, stream: LinkStream) -> io::Result<SocketAddr> {
        let remote = stream.remote;
        let id = self.next_link.fetch_add(1, Ordering::Relaxed) + 1;
        let link = link_address(id);
        let (frames, mut queued) = mpsc::channel::<Bytes>(LINK_QUEUE);
        {
            let mut links = self.links.lock().expect("link table lock");
            let from_ip = links
                .values()
                .filter(|l| l.remote.ip() == remote.ip())
                .count();
            if links.len() >= MAX_LINKS || from_ip >= MAX_LINKS_PER_IP {
                self.stats.links_refused.fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::other("too many TCP links"));
            }
            links.insert(link, Link { frames, remote });
        }
        let (mut reader, mut writer) = tokio::io::split(stream.io);
        self.tasks.spawn(async move {
            while let Some(datagram) = queued.recv().await {
                let header = (datagram.len() as u16).to_be_bytes();
                if writer.write_all(&header).await.is_err()
                    || writer.write_all(&datagram).await.is_err()
                {
                    break;
                }
            }
        });
        let socket = Arc::downgrade(self);
        self.tasks.spawn(async move {
            let mut buf = vec![0u8; u16::MAX as usize];
            let mut deadline = LINK_FIRST_DATAGRAM;
            loop {
                let datagram = read_link_datagram(&mut reader, &mut buf);
                let len = match tokio::time::timeout(deadline, datagram).await {
                    Ok(Ok(len)) => len,
                    Ok(Err(_)) | Err(_) => break,
                };
                deadline = LINK_IDLE;
                let Some(socket) = socket.upgrade() else {
                    break;
                };
                socket.receive_on_link(link, &buf[..len]);
            }
            if let Some(socket) = socket.upgrade() {
                socket.links.lock().expect("link table lock").remove(&link);
            }
        });
        Ok(link)
    }

    fn receive_on_link(&self, link: SocketAddr, datagram: &[u8]) {
        let mut paths = None;
        match self.sort_one(link, datagram, &mut paths) {
            Sorted::Quic => {
                let table = paths.get_or_insert_with(|| self.paths());
                let synthetic = table.synthetic_for(Route::Direct(link));
                self.inject(synthetic, Bytes::copy_from_slice(datagram));
            }
            Sorted::Forward(to) => {
                drop(paths.take());
                self.forward(datagram, None, to);
            }
            Sorted::Taken => {}
        }
        drop(paths);
        if let Some(waker) = self.recv_waker.lock().expect("waker lock").take() {
            waker.wake();
        }
    }

    /// Queues datagrams (`contents`, cut at `segment_size`) on a link; a full queue or a
    /// closed link loses them, which QUIC recovers from.
    fn send_on_link(
        &self,
        link: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let links = self.links.lock().expect("link table lock");
        let Some(link) = links.get(&link) else {
            self.stats
                .unroutable_dropped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let segment = segment_size.unwrap_or(contents.len()).max(1);
        for datagram in contents.chunks(segment) {
            if link
                .frames
                .try_send(Bytes::copy_from_slice(datagram))
                .is_err()
            {
                self.stats.relayed_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// The TCP peer behind a link address.
    pub fn link_remote(&self, link: &SocketAddr) -> Option<SocketAddr> {
        let links = self.links.lock().expect("link table lock");
        links.get(link).map(|l| l.remote)
    }

    /// Sends datagrams to a real address: a UDP one, or a link.
    fn send_to(&self, real: SocketAddr, transmit: &Transmit) -> io::Result<()> {
        if is_link(&real) {
            return self.send_on_link(real, transmit.contents, transmit.segment_size);
        }
        self.inner.try_send(&Transmit {
            destination: self.outbound(real),
            ecn: transmit.ecn,
            contents: transmit.contents,
            segment_size: transmit.segment_size,
            src_ip: transmit.src_ip,
        })
    }
}

impl DemuxSocket {
    /// Wraps each datagram of `transmit` (one, or several with GSO) in a relay frame, and
    /// sends the frames as batches of their own.
    fn send_relayed(
        &self,
        transmit: &Transmit,
        relay: SocketAddr,
        peer: Address,
    ) -> io::Result<()> {
        let header = RelayHeader {
            destination: peer,
            source: self.me,
        }
        .encode();
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let stride = header.len() + segment;
        let per_send = (MAX_SEND_BYTES / stride)
            .min(self.inner.max_transmit_segments())
            .max(1);
        RELAY_FRAMES.with_borrow_mut(|frames| {
            for (i, packets) in transmit.contents.chunks(segment * per_send).enumerate() {
                frames.clear();
                for packet in packets.chunks(segment) {
                    frames.extend_from_slice(&header);
                    frames.extend_from_slice(packet);
                }
                let sent = self.send_to(
                    relay,
                    &Transmit {
                        destination: relay,
                        ecn: transmit.ecn,
                        contents: frames,
                        segment_size: (packets.len() > segment).then_some(stride),
                        src_ip: transmit.src_ip,
                    },
                );
                match sent {
                    // Nothing went out yet: quinn retries the whole transmit later.
                    Err(e) if i == 0 => return Err(e),
                    // Part went out: the rest counts as lost, which QUIC recovers from.
                    Err(_) => {
                        let lost =
                            (transmit.contents.len() - i * segment * per_send).div_ceil(segment);
                        self.stats
                            .relayed_dropped
                            .fetch_add(lost as u64, Ordering::Relaxed);
                        return Ok(());
                    }
                    Ok(()) => {}
                }
            }
            Ok(())
        })
    }

    /// Moves waiting injected packets into quinn's buffers, one datagram per entry.
    fn hand_injected(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut injected = self.injected.lock().expect("injected queue lock");
        let mut handed = 0;
        while handed < bufs.len().min(meta.len()) {
            let Some((synthetic, packet)) = injected.pop_front() else {
                break;
            };
            if packet.len() > bufs[handed].len() {
                self.stats.relayed_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            bufs[handed][..packet.len()].copy_from_slice(&packet);
            meta[handed] = RecvMeta {
                addr: synthetic,
                len: packet.len(),
                stride: packet.len(),
                ecn: None,
                dst_ip: None,
            };
            handed += 1;
        }
        handed
    }
}

/// With QUIC bit greasing off, quinn drops a packet whose fixed bit (0x40) is clear.
fn hide_from_quinn(segment: &mut [u8]) {
    if let Some(first) = segment.first_mut() {
        *first = 0;
    }
}

impl AsyncUdpSocket for DemuxSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(route) = self.paths().route_for(&transmit.destination) else {
            // The path was evicted or released: as good as a lost packet.
            self.stats
                .unroutable_dropped
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        match route {
            Route::Direct(real) => self.send_to(real, transmit),
            Route::Relay { relay, peer } => self.send_relayed(transmit, relay, peer),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        {
            let mut waker = self.recv_waker.lock().expect("waker lock");
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
        }
        let handed = self.hand_injected(bufs, meta);
        if handed > 0 {
            return Poll::Ready(Ok(handed));
        }
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        let mut paths = None;
        for (m, buf) in meta[..n].iter_mut().zip(bufs.iter_mut()) {
            self.sort(m, buf, &mut paths);
        }
        // Relayed packets unwrapped just now: have quinn poll again for them.
        if !self
            .injected
            .lock()
            .expect("injected queue lock")
            .is_empty()
        {
            cx.waker().wake_by_ref();
        }
        // quinn skips entries whose len is 0, and bounds its own receive loop.
        Poll::Ready(Ok(n))
    }

    /// quinn is shown an IPv6 address so that it accepts the synthetic IPv6 remote addresses.
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(match self.inner.local_addr()? {
            SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
            v6 => v6,
        })
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Reads one datagram of a TCP link (`length u16 || datagram`) into `buf`; a length past
/// `buf` is an error, never a panic.
pub async fn read_link_datagram(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut header = [0u8; 2];
    reader.read_exact(&mut header).await?;
    let len = u16::from_be_bytes(header) as usize;
    let datagram = buf
        .get_mut(..len)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "link datagram too long"))?;
    reader.read_exact(datagram).await
}
