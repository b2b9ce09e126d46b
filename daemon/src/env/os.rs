//! The real outside world: the OS's sockets, interfaces, resolver, clock, random source and
//! files. The only node code that binds sockets, reads the wall clock, asks the OS for
//! randomness or writes files (`.ci/check-env` holds everything else to that).

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use mainline::async_dht::AsyncDht;
use quinn::Runtime;
use tern_proto::SecretIdentity;

use super::{BoundUdp, BoxFuture, BufferSizes, Env, LinkListener, LinkStream};
use crate::home::{Home, HomeError};
use crate::node::{Node, NodeError, TransportConfig};
use crate::transport::paths::canonical;

#[derive(Debug, Default, Clone, Copy)]
pub struct OsEnv;

impl OsEnv {
    pub fn shared() -> Arc<dyn Env> {
        Arc::new(OsEnv)
    }
}

impl Env for OsEnv {
    fn bind_udp(&self, at: SocketAddr, buffer_bytes: usize) -> io::Result<BoundUdp> {
        wrap_udp(std::net::UdpSocket::bind(at)?, buffer_bytes)
    }

    fn listen_tcp(&self, at: SocketAddr) -> io::Result<Box<dyn LinkListener>> {
        let listener = std::net::TcpListener::bind(at)?;
        listener.set_nonblocking(true)?;
        Ok(Box::new(tokio::net::TcpListener::from_std(listener)?))
    }

    fn connect_tcp(&self, to: SocketAddr) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move { tcp_link(tokio::net::TcpStream::connect(to).await?) })
    }

    fn interface_addresses(&self) -> Vec<IpAddr> {
        interface_addresses()
    }

    fn lookup_host(&self, host: String) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host(host).await?.collect()) })
    }

    fn wall_clock(&self) -> SystemTime {
        SystemTime::now()
    }

    fn start_dht(&self, bind: Ipv4Addr, bootstrap: &[String]) -> io::Result<AsyncDht> {
        let mut builder = mainline::Dht::builder();
        builder.bind_address(bind);
        if !bootstrap.is_empty() {
            builder.bootstrap(bootstrap);
        }
        Ok(builder.build()?.as_async())
    }

    fn fill_random(&self, bytes: &mut [u8]) {
        getrandom::fill(bytes).expect("the OS random source");
    }

    fn prepare_home(&self, home: &Home) -> Result<(), HomeError> {
        home.ensure_dir()?;
        home.check_private()
    }

    fn load_or_create_identity(&self, home: &Home) -> Result<SecretIdentity, HomeError> {
        home.load_or_create_identity()
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        write_atomically(path, bytes)
    }
}

/// Binds the local API socket (mode 0600), refusing to take it from a daemon that still answers on it.
pub async fn bind_local_api(path: &Path) -> io::Result<tokio::net::UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "a ternd already serves {}; stop it first or use another --home",
                    path.display()
                ),
            ));
        }
        // Left by a daemon that did not shut down cleanly.
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// A UDP socket bound elsewhere (inside a network namespace, say), sized and made ready for
/// quinn.
pub fn wrap_udp(socket: std::net::UdpSocket, buffer_bytes: usize) -> io::Result<BoundUdp> {
    socket.set_nonblocking(true)?;
    let buffers = set_buffer_sizes(&socket, buffer_bytes);
    let socket = quinn::TokioRuntime.wrap_udp_socket(socket)?;
    Ok(BoundUdp { socket, buffers })
}

fn tcp_link(stream: tokio::net::TcpStream) -> io::Result<LinkStream> {
    let remote = canonical(stream.peer_addr()?);
    let _ = stream.set_nodelay(true);
    Ok(LinkStream {
        io: Box::new(stream),
        remote,
    })
}

impl LinkListener for tokio::net::TcpListener {
    fn accept(&self) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(async move { tcp_link(tokio::net::TcpListener::accept(self).await?.0) })
    }
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

/// Replaces `path` with `bytes` so that a crash at any point leaves either the old or the new
/// file, never a torn one: a private (0600) temp file, synced, renamed over `path`, and the
/// directory synced so the rename itself survives a power cut.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
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

/// A [`Node`] on a UDP socket the caller bound, with everything else from the OS.
pub fn start_node(
    identity: SecretIdentity,
    socket: std::net::UdpSocket,
    config: TransportConfig,
) -> Result<Node, NodeError> {
    let socket = wrap_udp(socket, config.socket_buffer_bytes).map_err(NodeError::Socket)?;
    Node::start(identity, socket, OsEnv::shared(), config)
}

/// A client hands over a socket as one byte carrying its descriptor (`SCM_RIGHTS`).
impl super::ApiConnection for tokio::net::UnixStream {
    async fn receive_socket(&mut self) -> io::Result<Option<AttachedSocket>> {
        let raw = self.as_raw_fd();
        let received = loop {
            self.readable().await?;
            match self.try_io(tokio::io::Interest::READABLE, || receive_descriptor(raw)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                received => break received?,
            }
        };
        let Some(descriptor) = received else {
            return Ok(None);
        };
        let mut kind: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `kind` and `len` are valid for writes of the sizes given.
        let got = unsafe {
            libc::getsockopt(
                descriptor.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TYPE,
                (&raw mut kind).cast(),
                &mut len,
            )
        };
        if got != 0 || kind != libc::SOCK_STREAM {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor handed over is not a stream socket",
            ));
        }
        AttachedSocket::new(descriptor).map(Some)
    }
}

/// A stream socket a client handed over. The client may still hold the same open file (and
/// can change its flags), so every call passes `MSG_DONTWAIT` rather than trusting
/// `O_NONBLOCK`: nothing the client does to it can block a runtime worker.
pub struct AttachedSocket(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

impl AttachedSocket {
    fn new(descriptor: std::os::fd::OwnedFd) -> io::Result<Self> {
        // SAFETY: an `OwnedFd` stays open, on the same file, for as long as it is owned.
        let registered = unsafe { tokio::io::unix::AsyncFd::register(descriptor) };
        let socket = Self(registered.map_err(io::Error::from)?);
        // Request/reply traffic: each chunk quinn hands over goes out at once. (Not TCP:
        // nothing to set.)
        let _ = socket.set_option(libc::IPPROTO_TCP, libc::TCP_NODELAY, &(1 as libc::c_int));
        Ok(socket)
    }

    /// Closing sends a TCP reset rather than a FIN, so the local application sees a
    /// failure, not a clean end.
    pub fn reset_on_close(&self) {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let _ = self.set_option(libc::SOL_SOCKET, libc::SO_LINGER, &linger);
    }

    fn set_option<T>(&self, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
        // SAFETY: `value` is valid for reads of its size.
        let set = unsafe {
            libc::setsockopt(
                self.0.as_raw_fd(),
                level,
                name,
                (value as *const T).cast(),
                std::mem::size_of::<T>() as libc::socklen_t,
            )
        };
        if set == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl tokio::io::AsyncRead for AttachedSocket {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        loop {
            let mut ready = std::task::ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let received = ready.try_io(|fd| {
                // SAFETY: `unfilled` is valid for writes of its length.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        unfilled.as_mut_ptr().cast(),
                        unfilled.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            if let Ok(received) = received {
                buf.advance(received?);
                return std::task::Poll::Ready(Ok(()));
            }
        }
    }
}

impl tokio::io::AsyncWrite for AttachedSocket {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        loop {
            let mut ready = std::task::ready!(self.0.poll_write_ready(cx))?;
            let sent = ready.try_io(|fd| {
                // SAFETY: `data` is valid for reads of its length.
                let n = unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        data.as_ptr().cast(),
                        data.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            if let Ok(sent) = sent {
                return std::task::Poll::Ready(sent);
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        // SAFETY: a plain call on a descriptor this value owns.
        let done = unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_WR) };
        std::task::Poll::Ready(if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        })
    }
}

/// One `recvmsg` of a byte and at most one descriptor (the kernel closes any past the room
/// given); `None` at end of file, an error if bytes came without a descriptor.
fn receive_descriptor(socket: std::os::fd::RawFd) -> io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: an all-zero msghdr is a valid empty message.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `message` points at live buffers of the lengths it gives.
    let n = unsafe { libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut descriptor = None;
    // SAFETY: the CMSG_* walk stays within the control buffer the kernel filled.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let room = (*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(header).cast::<libc::c_int>();
                for i in 0..room / std::mem::size_of::<libc::c_int>() {
                    // Ours now: the kernel installed it for this process. Extras close on drop.
                    let fd = OwnedFd::from_raw_fd(data.add(i).read_unaligned());
                    if descriptor.is_none() {
                        descriptor = Some(fd);
                    }
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    match (n, descriptor) {
        (_, Some(descriptor)) => Ok(Some(descriptor)),
        (_, None) if message.msg_flags & libc::MSG_CTRUNC != 0 => Err(io::Error::other(
            "the daemon could not take the socket handed over (the kernel dropped it: \
             most likely ternd is at its open-file limit; raise `ulimit -n` for it)",
        )),
        (0, None) => Ok(None),
        (_, None) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected a socket handed over (SCM_RIGHTS) after an attach answer, got stream bytes",
        )),
    }
}
