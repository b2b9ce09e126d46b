//! The `ternd` daemon: wiring and status. It builds a [`Node`] and, around it, the rendezvous
//! role it serves, its client of the rendezvous servers, the DHT when on, the connector, and the services
//! (names, trust, trust requests, applications' ports, echo), then serves the local API.
//! Nothing outside this module depends on it; the local API ([`api`]) serves it.

pub mod api;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use tern_proto::Name;

use crate::dht::{self, Dht};
use crate::discovery::Discovery;
use crate::env::{BoundUdp, Env};
use crate::home::{Home, HomeError};
use crate::node::{Node, NodeError};
use crate::rendezvous::client::{COUNTER_FILE, ServerState};
use crate::rendezvous::pins::{SERVERS_FILE, SpecError};
use crate::rendezvous::{self, Limits, RecordsFile, Registry, RendezvousClient, Service};
use crate::services::apps::Apps;
use crate::services::echo;
use crate::services::names::{NAMES_FILE, NameBook, Names};
use crate::services::trust::{TRUST_FILE, Trust};
use crate::services::trust_requests::{REQUESTS_FILE, TrustRequests};
use crate::store::{Document, StoreError};
use crate::streams::StreamTable;
use crate::traversal::connect::Connector;

pub use crate::config::DaemonConfig;
pub use crate::services::apps::FIRST_APP_PORT;
pub use crate::services::echo::ECHO_PORT;

/// The UDP port `ternd` listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7440;
/// The rendezvous records this node holds, kept across restarts.
pub const RECORDS_FILE: &str = "rendezvous.records";

/// Why a daemon did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on UDP {addr}: {source}. Pick another --listen address or port")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Server(#[from] SpecError),
    #[error("cannot join the Mainline DHT: {0}. Check --dht-bootstrap, or start without --dht")]
    Dht(std::io::Error),
}

pub struct Daemon {
    /// This daemon, for the local API's tasks.
    me: Weak<Daemon>,
    home: Home,
    node: Node,
    rendezvous: Arc<RendezvousClient>,
    discovery: Arc<Discovery>,
    connector: Arc<Connector>,
    names: Arc<Names>,
    trust: Arc<Trust>,
    trust_requests: Arc<TrustRequests>,
    apps: Apps,
    registry: Arc<Mutex<Registry>>,
    records: Arc<RecordsFile>,
    /// The rendezvous role's limits and refusal counts.
    limits: Arc<Limits>,
    streams: Mutex<StreamTable>,
    /// Local API clients served at once (`api::serve`).
    pub(crate) api_clients: Arc<tokio::sync::Semaphore>,
}

impl Daemon {
    /// Loads the identity, binds the socket and starts every service, all through `env` (the
    /// OS, or a simulation). Needs a tokio runtime.
    pub fn start(config: DaemonConfig, env: Arc<dyn Env>) -> Result<Arc<Self>, StartError> {
        let socket = env
            .bind_udp(config.listen, config.transport.socket_buffer_bytes)
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        Self::start_on(config, env, socket)
    }

    /// Like [`Daemon::start`] on a socket the caller bound (in a network namespace, say);
    /// `config.listen` is not used.
    pub fn start_on(
        config: DaemonConfig,
        env: Arc<dyn Env>,
        socket: BoundUdp,
    ) -> Result<Arc<Self>, StartError> {
        env.prepare_home(&config.home)?;
        let identity = env.load_or_create_identity(&config.home)?;
        let dir = config.home.dir().to_path_buf();
        let node = Node::start(identity, socket, env.clone(), config.transport)?;
        let span = node.span();
        let _in_span = span.enter();
        let trust = Arc::new(Trust::new(
            node.clone(),
            Document::load(&env, dir.join(TRUST_FILE))?,
        ));
        let book = Document::<NameBook>::load(&env, dir.join(NAMES_FILE))?;
        if let Some(hostname) = config.hostname {
            book.update(|book| book.own = Some(hostname))?;
        }
        let registry = Arc::new(Mutex::new(Registry::new(
            rendezvous::registry::DEFAULT_CAPACITY,
            config.name_grace.as_secs(),
        )));
        let rendezvous = Arc::new(RendezvousClient::new(
            node.clone(),
            ServerState::configured(&config.rendezvous)?,
            Document::load(&env, dir.join(SERVERS_FILE))?,
            registry.clone(),
            Document::load(&env, dir.join(COUNTER_FILE))?,
            book.read(|book| book.own.clone()),
        )?);
        let dht = match &config.dht {
            Some(settings) => Some(Dht::start(node.clone(), settings).map_err(StartError::Dht)?),
            None => None,
        };
        let discovery = Arc::new(Discovery::new(rendezvous.clone(), dht, config.lookup));
        let connector = Arc::new(Connector::new(
            node.clone(),
            rendezvous.clone(),
            discovery.clone(),
        ));
        let names = Arc::new(Names::new(
            node.clone(),
            rendezvous.clone(),
            discovery.clone(),
            book,
        ));
        let trust_requests = TrustRequests::start(
            node.clone(),
            names.clone(),
            connector.clone(),
            trust.clone(),
            Document::load(&env, dir.join(REQUESTS_FILE))?,
        );
        let records = Arc::new(RecordsFile::restore(
            node.clone(),
            registry.clone(),
            dir.join(RECORDS_FILE),
        ));
        let limits = Arc::new(Limits::default());
        let own_servers = Arc::downgrade(&rendezvous);
        node.spawn(rendezvous::serve(Arc::new(Service {
            node: node.clone(),
            registry: registry.clone(),
            limits: limits.clone(),
            claimed: records.claimed.clone(),
            is_own_server: Box::new(move |peer| {
                own_servers.upgrade().is_some_and(|c| c.is_own_server(peer))
            }),
        })));
        node.spawn(rendezvous::server::persist(Arc::downgrade(&records)));
        rendezvous.start();
        if let Some(dht) = discovery.dht() {
            node.spawn(dht::keep_published(
                Arc::downgrade(dht),
                Arc::downgrade(&rendezvous),
            ));
        }
        echo::start(&node);
        let daemon = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            home: config.home,
            node: node.clone(),
            apps: Apps::new(node.clone(), connector.clone()),
            rendezvous,
            discovery,
            connector,
            names,
            trust,
            trust_requests,
            registry,
            records,
            limits,
            streams: Mutex::new(StreamTable::default()),
            api_clients: Arc::new(tokio::sync::Semaphore::new(config.max_api_clients)),
        });
        node.spawn(report_limits(Arc::downgrade(&daemon)));
        Ok(daemon)
    }

    /// Serves the local API on `listener` (`env::os::bind_local_api`), as one of the node's tasks.
    pub fn serve_api(&self, listener: tokio::net::UnixListener) {
        self.node.spawn(api::serve(self.me.clone(), listener));
    }

    /// Stops the node: saves the records, tells peers, and stops every task, so that its
    /// socket, TCP listener and local API are free and a node with the same home can start
    /// in this process.
    pub async fn stop(&self) {
        self.records.save();
        self.node.stop().await;
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    pub fn rendezvous(&self) -> &RendezvousClient {
        &self.rendezvous
    }

    /// The Mainline DHT, when this node runs with it.
    pub fn dht(&self) -> Option<&Arc<Dht>> {
        self.discovery.dht()
    }

    pub fn connector(&self) -> &Connector {
        &self.connector
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    pub fn trust_requests(&self) -> &TrustRequests {
        &self.trust_requests
    }

    pub fn apps(&self) -> &Apps {
        &self.apps
    }

    /// The table of spliced streams (local API `reset` / `outcome`).
    pub fn streams(&self) -> std::sync::MutexGuard<'_, StreamTable> {
        self.streams.lock().expect("stream table lock")
    }

    pub fn own_name(&self) -> Option<Name> {
        self.rendezvous.own_name()
    }

    /// Why a connection stays on the relay, as far as this node can tell: `peers` shows it.
    pub fn relayed_because(&self) -> &'static str {
        match self.rendezvous.nat().mapping {
            crate::traversal::nat::Mapping::EndpointDependent => {
                "this node's NAT gives each destination a new port (symmetric): hole punching \
                 cannot meet the peer; a direct path is tried again, backing off"
            }
            _ => {
                "hole punching got no answer: the peer's NAT (symmetric, or blocking UDP) or a \
                 firewall lets nothing in; a direct path is tried again, backing off"
            }
        }
    }

    pub fn status(&self) -> Value {
        let (registered, servers) = self.rendezvous.status();
        let (records_held, names_held) = {
            let registry = self.registry.lock().expect("registry lock");
            (registry.len(), registry.names_held())
        };
        let refused =
            |count: &std::sync::atomic::AtomicU64| count.load(std::sync::atomic::Ordering::Relaxed);
        json!({
            "address": self.node.address(),
            "public_key": hex::encode(self.node.identity().key_bytes()),
            "listen": self.node.local_addr(),
            "endpoints": self.rendezvous.endpoints(),
            "registered": registered,
            "rendezvous": servers,
            "nat": self.rendezvous.nat(),
            "dht": self.discovery.dht().map_or(json!("off"), |dht| dht.status()),
            "name": self.own_name(),
            "peers": self.node.peers().len(),
            "paths": self.node.paths_held(),
            // Tasks alive in the daemon's runtime: what a leak of tasks would show first.
            "tasks": tokio::runtime::Handle::try_current().ok().map(|h| h.metrics().num_alive_tasks()),
            "records_held": records_held,
            "names_held": names_held,
            "dropped": self.node.drops(),
            "limits_hit": self.node.limits_hit(),
            "refused": {
                "rendezvous_requests": refused(&self.limits.refused),
                "name_claims_taken": refused(&self.limits.names_taken),
                "trust_messages": self.trust_requests.refused(),
            },
            "home": self.home.dir(),
        })
    }
}

impl Drop for Daemon {
    /// Some of the node's tasks hold the node itself: stop them, or it would never go.
    fn drop(&mut self) {
        self.node.stop_tasks();
    }
}

/// How often limits that were hit are logged: one line per interval whatever peers do.
const LIMIT_REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Logs, once per interval, which limits were hit and which datagrams were dropped.
async fn report_limits(daemon: std::sync::Weak<Daemon>) {
    let mut last = None;
    loop {
        tokio::time::sleep(LIMIT_REPORT_INTERVAL).await;
        let Some(d) = daemon.upgrade() else { return };
        let now = (d.node.limits_hit(), d.node.drops());
        if last.is_some_and(|last| last != now) {
            let (limits, dropped) = now;
            tracing::warn!(
                ?limits,
                ?dropped,
                "limits were hit (totals since start; `ternctl status` shows them)"
            );
        }
        last = Some(now);
    }
}
