//! One simulated host's outside world, as a node sees it through `Env`.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use tern_daemon::env::{BoundUdp, BoxFuture, BufferSizes, Env, EnvExt, LinkListener, LinkStream};
use tern_daemon::home::{Home, HomeError};
use tern_proto::SecretIdentity;

use super::net::Network;

/// Where every simulated wall clock starts: 2026-01-01T00:00:00Z.
const SIM_EPOCH_UNIX_SECS: u64 = 1_767_225_600;

#[derive(Debug)]
pub struct SimEnv {
    ip: Ipv4Addr,
    network: Arc<Network>,
    rng: Mutex<ChaCha8Rng>,
    /// The host's disk: survives its node's crash and restart.
    files: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
    /// How far this host's wall clock is off the network's (a clock stepped back or ahead).
    clock_offset: Mutex<i64>,
}

impl SimEnv {
    pub fn new(ip: Ipv4Addr, network: Arc<Network>, seed: u64) -> Self {
        Self {
            ip,
            network,
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            files: Mutex::default(),
            clock_offset: Mutex::new(0),
        }
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Steps this host's wall clock by `seconds` (negative: back).
    pub fn step_clock(&self, seconds: i64) {
        *self.clock_offset.lock().expect("clock lock") += seconds;
    }

    /// The bytes of a file on this host's disk.
    pub fn file(&self, path: &Path) -> Option<Vec<u8>> {
        self.files.lock().expect("disk lock").get(path).cloned()
    }
}

impl Env for SimEnv {
    fn bind_udp(&self, at: SocketAddr, _buffer_bytes: usize) -> io::Result<BoundUdp> {
        let at = match at.ip().is_unspecified() {
            true => SocketAddr::new(self.ip.into(), at.port()),
            false => at,
        };
        if at.ip() != IpAddr::V4(self.ip) {
            return Err(io::Error::from(io::ErrorKind::AddrNotAvailable));
        }
        let socket = self.network.bind_udp(at)?;
        Ok(BoundUdp {
            socket,
            buffers: BufferSizes {
                receive: 0,
                send: 0,
            },
        })
    }

    fn listen_tcp(&self, at: SocketAddr) -> io::Result<Box<dyn LinkListener>> {
        Ok(Box::new(self.network.listen_tcp(at)?))
    }

    fn connect_tcp(&self, to: SocketAddr) -> BoxFuture<'_, io::Result<LinkStream>> {
        Box::pin(self.network.connect_tcp(self.ip.into(), to))
    }

    fn interface_addresses(&self) -> Vec<IpAddr> {
        vec![self.ip.into()]
    }

    /// Only literal addresses: the simulated internet has no DNS.
    fn lookup_host(&self, host: String) -> BoxFuture<'_, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            host.parse::<SocketAddr>().map(|at| vec![at]).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{host}: the simulated network resolves only IP:PORT"),
                )
            })
        })
    }

    fn wall_clock(&self) -> SystemTime {
        let elapsed = self.network.elapsed();
        let offset = *self.clock_offset.lock().expect("clock lock");
        let base = SystemTime::UNIX_EPOCH + Duration::from_secs(SIM_EPOCH_UNIX_SECS) + elapsed;
        match offset >= 0 {
            true => base + Duration::from_secs(offset.unsigned_abs()),
            false => base - Duration::from_secs(offset.unsigned_abs()),
        }
    }

    fn fill_random(&self, bytes: &mut [u8]) {
        self.rng.lock().expect("rng lock").fill_bytes(bytes);
    }

    fn prepare_home(&self, _home: &Home) -> Result<(), HomeError> {
        Ok(())
    }

    fn load_or_create_identity(&self, home: &Home) -> Result<SecretIdentity, HomeError> {
        let path = home.identity_path();
        if let Some(bytes) = self.file(&path) {
            return SecretIdentity::from_key_file(&bytes)
                .map_err(|source| HomeError::CorruptIdentity { path, source });
        }
        let identity = SecretIdentity::from_seed(self.random_bytes());
        self.write_file(&path, &identity.to_key_file())
            .map_err(|source| HomeError::WriteIdentity { path, source })?;
        Ok(identity)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.file(path)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut files = self.files.lock().expect("disk lock");
        files.insert(path.to_path_buf(), bytes.to_vec());
        Ok(())
    }
}
