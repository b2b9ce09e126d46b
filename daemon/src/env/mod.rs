//! `Env`: everything a node takes from the outside world — its network (UDP socket, TCP
//! links, interfaces, host names), wall time, randomness and the store for its home — handed
//! in at construction. [`os::OsEnv`] is the real one; tern-netsim supplies a simulated one,
//! so that many real nodes run in one process on a simulated network under tokio's paused
//! clock. Monotonic time is not here: node code reads tokio's clock, which a paused runtime
//! drives.

pub mod os;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mainline::async_dht::AsyncDht;
use quinn::AsyncUdpSocket;
use tern_proto::SecretIdentity;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::home::{Home, HomeError};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The socket buffer sizes the network actually granted.
#[derive(Debug, Clone, Copy)]
pub struct BufferSizes {
    pub receive: usize,
    pub send: usize,
}

/// A bound UDP socket, ready for quinn.
pub struct BoundUdp {
    pub socket: Arc<dyn AsyncUdpSocket>,
    pub buffers: BufferSizes,
}

/// A byte stream a TCP link runs over.
pub trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> LinkIo for T {}

/// A local API connection. A Unix socket can also carry a connected stream socket from the
/// client (`attach`), which the daemon then copies to and from itself.
pub trait ApiConnection: LinkIo {
    /// The socket the client sends next; `Ok(None)` if it closed the connection instead.
    fn receive_socket(
        &mut self,
    ) -> impl Future<Output = io::Result<Option<os::AttachedSocket>>> + Send;
}

/// Simulated clients share the daemon's process: they have no descriptors to hand over.
impl ApiConnection for tokio::io::DuplexStream {
    async fn receive_socket(&mut self) -> io::Result<Option<os::AttachedSocket>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "only a Unix socket connection can hand over a socket",
        ))
    }
}

/// One TCP connection (or what stands in for one), with the address of its other end.
pub struct LinkStream {
    pub io: Box<dyn LinkIo>,
    pub remote: SocketAddr,
}

/// Accepts TCP links on the node's port.
pub trait LinkListener: Send + Sync + 'static {
    fn accept(&self) -> BoxFuture<'_, io::Result<LinkStream>>;
}

pub trait Env: Send + Sync + fmt::Debug + 'static {
    /// Binds the node's UDP socket, asking for `buffer_bytes` of buffer each way.
    fn bind_udp(&self, at: SocketAddr, buffer_bytes: usize) -> io::Result<BoundUdp>;
    fn listen_tcp(&self, at: SocketAddr) -> io::Result<Box<dyn LinkListener>>;
    fn connect_tcp(&self, to: SocketAddr) -> BoxFuture<'_, io::Result<LinkStream>>;
    /// The addresses of this host's interfaces that are up, loopback last.
    fn interface_addresses(&self) -> Vec<IpAddr>;
    /// Resolves `HOST:PORT`.
    fn lookup_host(&self, host: String) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>>;

    fn wall_clock(&self) -> SystemTime;
    /// Fills `bytes` from the env's random source (seeded in simulation).
    fn fill_random(&self, bytes: &mut [u8]);

    /// Makes sure the home exists and only its owner can use it.
    fn prepare_home(&self, home: &Home) -> Result<(), HomeError>;
    /// The node's identity, created (with `fill_random`) on first use.
    fn load_or_create_identity(&self, home: &Home) -> Result<SecretIdentity, HomeError>;
    /// A file's bytes; `NotFound` when there is none.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Replaces a file so that a crash leaves the old bytes or the new, never a mix.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;

    /// Joins the Mainline DHT from `bind` through the `bootstrap` nodes (`HOST:PORT`; none:
    /// the public ones). The DHT keeps its own thread and socket, so an env that cannot give
    /// it real ones (the simulator) has none.
    fn start_dht(&self, bind: Ipv4Addr, bootstrap: &[String]) -> io::Result<AsyncDht> {
        let _ = (bind, bootstrap);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this environment has no Mainline DHT",
        ))
    }
}

/// What node code derives from an env.
pub trait EnvExt {
    /// Seconds since the Unix epoch by the env's wall clock (0 before it).
    fn unix_now(&self) -> u64;
    fn unix_micros(&self) -> u64;
    fn random_u64(&self) -> u64;
    fn random_bytes<const N: usize>(&self) -> [u8; N];
}

impl<E: Env + ?Sized> EnvExt for E {
    fn unix_now(&self) -> u64 {
        since_epoch(self.wall_clock()).as_secs()
    }

    fn unix_micros(&self) -> u64 {
        since_epoch(self.wall_clock()).as_micros() as u64
    }

    fn random_u64(&self) -> u64 {
        u64::from_le_bytes(self.random_bytes())
    }

    fn random_bytes<const N: usize>(&self) -> [u8; N] {
        let mut bytes = [0u8; N];
        self.fill_random(&mut bytes);
        bytes
    }
}

fn since_epoch(at: SystemTime) -> Duration {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
}
