//! The node's one UDP socket, as quinn's `AsyncUdpSocket`: QUIC passes through (with real
//! addresses swapped for the synthetic ones of [`PathTable`]); STUN and tern packets are
//! sorted out by their first byte (SPEC §4) and handed to the node on a bounded channel.
//! quinn-udp's GSO/GRO batching is kept: a received batch is classified per segment.
//!
//! Relay routes: QUIC packets for a relayed path leave wrapped in relay frames to the relay;
//! relay frames addressed to this node are unwrapped and handed to quinn as packets from
//! that relayed path's synthetic address. Frames for other nodes go to the node (which may
//! be serving as a relay).

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, UdpPoller};
use tern_proto::Address;
use tern_proto::packet::{PacketKind, RelayHeader, TernType, classify};
use tokio::sync::mpsc;

use super::paths::{PathTable, Route, canonical};

/// Datagrams kept waiting for the node's control task before new ones are dropped.
const DIVERTED_QUEUE: usize = 1024;
/// Unwrapped relayed packets kept waiting for quinn before new ones are dropped.
const RELAYED_QUEUE: usize = 1024;

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
}

#[derive(Debug)]
pub struct DemuxSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    inner_ipv6: bool,
    /// This node's address: the source of the relay frames it sends.
    me: Address,
    paths: Mutex<PathTable>,
    /// Relayed QUIC packets, unwrapped, for quinn: (synthetic source, packet).
    relayed: Mutex<VecDeque<(SocketAddr, Bytes)>>,
    diverted: mpsc::Sender<Diverted>,
    pub stats: SocketStats,
}

impl DemuxSocket {
    /// Wraps a bound socket (after sizing its buffers) for quinn and for the node's own packets.
    pub fn new(
        socket: std::net::UdpSocket,
        buffer_bytes: usize,
        me: Address,
    ) -> io::Result<(Arc<Self>, mpsc::Receiver<Diverted>, BufferSizes)> {
        let sizes = set_buffer_sizes(&socket, buffer_bytes);
        let inner_ipv6 = socket.local_addr()?.is_ipv6();
        let inner = quinn::TokioRuntime.wrap_udp_socket(socket)?;
        let (tx, rx) = mpsc::channel(DIVERTED_QUEUE);
        let socket = Arc::new(Self {
            inner,
            inner_ipv6,
            me,
            paths: Mutex::new(PathTable::default()),
            relayed: Mutex::new(VecDeque::new()),
            diverted: tx,
            stats: SocketStats::default(),
        });
        Ok((socket, rx, sizes))
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
        let transmit = Transmit {
            destination: self.outbound(canonical(to)),
            ecn: None,
            contents: data,
            segment_size: None,
            src_ip: None,
        };
        let mut poller = self.inner.clone().create_io_poller();
        loop {
            match self.inner.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx)).await?;
                }
                other => return other,
            }
        }
    }

    /// Sorts one received buffer: diverts what is not QUIC, maps the sender for quinn.
    fn sort<'a>(
        &'a self,
        meta: &mut RecvMeta,
        buf: &mut [u8],
        paths: &mut Option<MutexGuard<'a, PathTable>>,
    ) {
        let stride = if meta.stride == 0 {
            meta.len
        } else {
            meta.stride
        };
        let from = canonical(meta.addr);
        let mut quic = false;
        for segment in buf[..meta.len].chunks_mut(stride.max(1)) {
            match classify(segment) {
                PacketKind::Quic => quic = true,
                PacketKind::Unknown => {
                    self.stats.unknown_dropped.fetch_add(1, Ordering::Relaxed);
                    hide_from_quinn(segment);
                }
                PacketKind::Tern(TernType::Relay)
                    if RelayHeader::decode(segment)
                        .is_some_and(|(h, _)| h.destination == self.me) =>
                {
                    let (header, packet) = RelayHeader::decode(segment).expect("checked above");
                    let table = paths.get_or_insert_with(|| self.paths());
                    let synthetic = table.synthetic_for(Route::Relay {
                        relay: from,
                        peer: header.source,
                    });
                    let mut relayed = self.relayed.lock().expect("relay queue lock");
                    if relayed.len() < RELAYED_QUEUE {
                        relayed.push_back((synthetic, Bytes::copy_from_slice(packet)));
                    } else {
                        self.stats.relayed_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    hide_from_quinn(segment);
                }
                kind => {
                    let diverted = Diverted {
                        kind,
                        from,
                        data: Bytes::copy_from_slice(segment),
                    };
                    if self.diverted.try_send(diverted).is_err() {
                        self.stats.diverted_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    hide_from_quinn(segment);
                }
            }
        }
        if quic {
            let table = paths.get_or_insert_with(|| self.paths());
            meta.addr = table.synthetic_for(Route::Direct(from));
        } else {
            meta.len = 0;
        }
    }
}

impl DemuxSocket {
    /// Wraps each datagram of `transmit` (one, or several with GSO) in a relay frame.
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
        for (i, packet) in transmit.contents.chunks(segment).enumerate() {
            let frame = [&header[..], packet].concat();
            let sent = self.inner.try_send(&Transmit {
                destination: self.outbound(relay),
                ecn: transmit.ecn,
                contents: &frame,
                segment_size: None,
                src_ip: transmit.src_ip,
            });
            match sent {
                // Nothing went out yet: quinn retries the whole transmit later.
                Err(e) if i == 0 => return Err(e),
                // Part went out: the rest counts as lost, which QUIC recovers from.
                Err(_) => {
                    self.stats.relayed_dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Moves waiting relayed packets into quinn's buffers, one datagram per entry.
    fn hand_relayed(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut relayed = self.relayed.lock().expect("relay queue lock");
        let mut handed = 0;
        while handed < bufs.len().min(meta.len()) {
            let Some((synthetic, packet)) = relayed.pop_front() else {
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
            Route::Direct(real) => self.inner.try_send(&Transmit {
                destination: self.outbound(real),
                ecn: transmit.ecn,
                contents: transmit.contents,
                segment_size: transmit.segment_size,
                src_ip: transmit.src_ip,
            }),
            Route::Relay { relay, peer } => self.send_relayed(transmit, relay, peer),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let handed = self.hand_relayed(bufs, meta);
        if handed > 0 {
            return Poll::Ready(Ok(handed));
        }
        let n = ready!(self.inner.poll_recv(cx, bufs, meta))?;
        let mut paths = None;
        for (m, buf) in meta[..n].iter_mut().zip(bufs.iter_mut()) {
            self.sort(m, buf, &mut paths);
        }
        // Relayed packets unwrapped just now: have quinn poll again for them.
        if !self.relayed.lock().expect("relay queue lock").is_empty() {
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

/// The socket buffer sizes the kernel actually granted.
#[derive(Debug, Clone, Copy)]
pub struct BufferSizes {
    pub receive: usize,
    pub send: usize,
}

/// Linux's default 208 KiB receive buffer drops packets under quinn at loopback speed; ask for
/// `bytes` (past rmem_max with CAP_NET_ADMIN via the FORCE options) and report what we got.
pub fn set_buffer_sizes(socket: &std::net::UdpSocket, bytes: usize) -> BufferSizes {
    let fd = socket.as_raw_fd();
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    let set = |forced: libc::c_int, plain: libc::c_int| {
        // SAFETY: setsockopt with a pointer to a live c_int and its exact size.
        unsafe {
            let ptr = &value as *const libc::c_int as *const libc::c_void;
            let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            if libc::setsockopt(fd, libc::SOL_SOCKET, forced, ptr, len) != 0 {
                libc::setsockopt(fd, libc::SOL_SOCKET, plain, ptr, len);
            }
        }
    };
    let get = |option: libc::c_int| {
        let mut out: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt into a live c_int with its size.
        unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                &mut out as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            );
        }
        out.max(0) as usize
    };
    set(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    set(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    BufferSizes {
        receive: get(libc::SO_RCVBUF),
        send: get(libc::SO_SNDBUF),
    }
}
