//! This node as a client of its rendezvous servers: the requests (register, look up,
//! introduce) and [`RendezvousClient`], which reaches the configured servers, checks their
//! keys, keeps this node registered with each, makes its own signed record, and finds peers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};
use tern_proto::dht::Reachable;
use tern_proto::record::{MAX_ENDPOINTS, Record};
use tern_proto::rendezvous::{Answer, MAX_MESSAGE_LEN, RENDEZVOUS_PORT, Request};
use tern_proto::stream::StreamStatus;
use tern_proto::{Address, Name};
use tokio::time::Instant;

use super::registration::{REFRESH_INTERVAL, Registered, Registration, Step};
use super::{EXCHANGE_TIMEOUT, RECORD_LIFETIME, RegisterError, Registry, RendezvousError};
use crate::discovery::next_before;
use crate::env::EnvExt;
use crate::node::{DialError, ExchangeError, Node, ProbeError};
use crate::rendezvous::pins::{KeyCheck, ServerPins, ServerSpec, SpecError};
use crate::store::{Document, StoreError};
use crate::transport::paths::{canonical, is_link};
use crate::traversal::nat::NatBehaviour;

/// A rendezvous whose request queue is full (many nodes asking at once) is asked again, up to
/// this many times, after a pause that doubles each time (with jitter).
const BUSY_RETRIES: u32 = 4;
const BUSY_PAUSE: Duration = Duration::from_millis(50);
/// Asks `server` to introduce this node to `target` (see [`Request::Introduce`]).
pub async fn request_introduction(
    node: &Node,
    server: Address,
    target: Address,
    own: Record,
) -> Result<(), RendezvousError> {
    let request = Request::Introduce {
        target,
        record: Box::new(own),
    };
    match ask(node, server, &request).await? {
        Answer::Introduced => Ok(()),
        Answer::NotFound => Err(RendezvousError::Refused(format!(
            "{target} is not connected to it"
        ))),
        Answer::Refused(reason) => Err(RendezvousError::Refused(reason)),
        other => Err(RendezvousError::Unexpected(Box::new(other), "introduce")),
    }
}

/// One request to a connected rendezvous, one answer.
pub async fn ask(
    node: &Node,
    server: Address,
    request: &Request,
) -> Result<Answer, RendezvousError> {
    let encoded = request.encode();
    let mut pause = BUSY_PAUSE;
    let mut retries = 0;
    loop {
        let exchange = node.exchange(server, RENDEZVOUS_PORT, &encoded, MAX_MESSAGE_LEN);
        let answered = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| RendezvousError::Timeout)?;
        let busy = matches!(
            answered,
            Err(ExchangeError::Dial(DialError::Refused {
                status: StreamStatus::Busy,
                ..
            }))
        );
        if !busy || retries == BUSY_RETRIES {
            return Ok(Answer::decode(&answered?)?);
        }
        // Many nodes asking at once: spread the retries out.
        let jitter = f64::from(u32::from_le_bytes(node.env().random_bytes())) / f64::from(u32::MAX);
        tokio::time::sleep(pause.mul_f64(1.0 + jitter)).await;
        pause *= 2;
        retries += 1;
    }
}

/// Registers `record` and returns the address the rendezvous sees this node at.
pub async fn register(
    node: &Node,
    server: Address,
    record: Record,
) -> Result<SocketAddr, RendezvousError> {
    match ask(node, server, &Request::Register(Box::new(record))).await? {
        Answer::Registered { observed } => Ok(observed),
        Answer::NameTaken { name, holder } => Err(RendezvousError::NameTaken { name, holder }),
        Answer::Stale { stored_seq } => Err(RendezvousError::Stale { stored_seq }),
        Answer::Refused(reason) => Err(RendezvousError::Refused(reason)),
        other => Err(RendezvousError::Unexpected(Box::new(other), "register")),
    }
}

/// Looks `address` up; the record is verified by decoding and must be for that address.
pub async fn lookup(
    node: &Node,
    server: Address,
    address: Address,
) -> Result<Option<Record>, RendezvousError> {
    match ask(node, server, &Request::Lookup(address)).await? {
        Answer::Found(record) if record.address() == address && record.is_live(node.unix_now()) => {
            Ok(Some(*record))
        }
        Answer::Found(_) => Err(RendezvousError::Refused(format!(
            "answered a lookup for {address} with another node's or an expired record"
        ))),
        Answer::NotFound => Ok(None),
        Answer::Refused(reason) => Err(RendezvousError::Refused(reason)),
        other => Err(RendezvousError::Unexpected(Box::new(other), "lookup")),
    }
}

/// The live record that holds `name` at `server`; it must carry that name (it is signed, so
/// the server cannot attach a name to another node's record).
pub async fn lookup_name(
    node: &Node,
    server: Address,
    name: &Name,
) -> Result<Option<Record>, RendezvousError> {
    match ask(node, server, &Request::LookupName(name.clone())).await? {
        Answer::Found(record)
            if record.name.as_ref() == Some(name) && record.is_live(node.unix_now()) =>
        {
            Ok(Some(*record))
        }
        Answer::Found(record) => Err(RendezvousError::Refused(format!(
            "answered a lookup for the name {name} with a record of {} that does not claim it \
             or has expired",
            record.address()
        ))),
        Answer::NotFound => Ok(None),
        Answer::Refused(reason) => Err(RendezvousError::Refused(reason)),
        other => Err(RendezvousError::Unexpected(Box::new(other), "name lookup")),
    }
}

/// How long a STUN request to the rendezvous may take before registering without it.
const STUN_WAIT: Duration = Duration::from_secs(1);
/// How long each NAT behaviour test waits for its answer.
const NAT_TEST_WAIT: Duration = Duration::from_secs(2);
/// How long a rendezvous gets to answer over UDP before it is tried over TCP.
const UDP_FIRST: Duration = Duration::from_secs(3);

/// Control counters and record seqs start from the wall clock, yet must never repeat when it
/// steps back: the home keeps a floor a block ahead of the counter, raised before it is used up.
pub const COUNTER_FILE: &str = "counter.json";
/// A block of 2^24: far more than a minute's control packets (probes are budgeted at 2000 a
/// second; seqs are drawn every minute), and small enough that a node restarting in a loop
/// runs at most 17 s of the clock ahead per restart.
const COUNTER_BLOCK: u64 = 1 << 24;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CounterFloor {
    floor: u64,
}

/// What the node knows about one configured rendezvous server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServerState {
    server: String,
    address: Option<Address>,
    registered: bool,
    observed: Option<SocketAddr>,
    last_error: Option<String>,
    /// Why this server did not take this node's name (another key holds it), if it did not.
    name_refused: Option<String>,
    /// The NAT this node sits behind, as seen through this server.
    nat: Option<NatBehaviour>,
    /// The address `nat` was discovered from: when the observed one changes, it is again.
    #[serde(skip)]
    nat_observed: Option<SocketAddr>,
}

impl ServerState {
    /// The state of each server given as `HOST:PORT` (or `ADDRESS@HOST:PORT`), none reached.
    pub fn configured(specs: &[String]) -> Result<Vec<Self>, SpecError> {
        specs
            .iter()
            .map(|server| {
                server.parse::<ServerSpec>()?;
                Ok(Self {
                    server: server.clone(),
                    address: None,
                    registered: false,
                    observed: None,
                    last_error: None,
                    name_refused: None,
                    nat: None,
                    nat_observed: None,
                })
            })
            .collect()
    }
}

/// Two rendezvous servers answered one name with two keys: neither is picked.
#[derive(Debug, thiserror::Error)]
#[error(
    "rendezvous servers disagree on the name {name}: {first_server} gives {first}, \
     {second_server} gives {second}; find out which is meant, then `ternctl alias add` it"
)]
pub struct NameConflict {
    pub name: Name,
    pub first: Address,
    pub first_server: String,
    pub second: Address,
    pub second_server: String,
}

/// Why a name's look-up at the rendezvous servers gave no record.
#[derive(Debug, thiserror::Error)]
pub enum NameLookupError {
    #[error("{0}")]
    Unanswered(String),
    #[error(transparent)]
    Conflict(#[from] NameConflict),
}

/// What one rendezvous said to a look-up: the server and its record, if it holds one; or why
/// it could not be asked.
type ServerAnswer = Result<(Address, Option<Record>), String>;

/// After the first answer to a name, how long the other servers get to disagree with it.
const NAME_ANSWERS_WAIT: Duration = Duration::from_secs(1);

/// The name this node claimed is held by another key at one of its rendezvous servers.
#[derive(Debug, thiserror::Error)]
#[error(
    "the name {name} is held by {holder} at {server}: names go to the first key that claims \
     them; pick another name"
)]
pub struct NameHeld {
    pub name: Name,
    pub holder: Address,
    pub server: String,
}

/// This node's side of every configured rendezvous server, and of its own registry when it
/// is its own rendezvous.
pub struct RendezvousClient {
    node: Node,
    servers: Mutex<Vec<ServerState>>,
    pins: Document<ServerPins>,
    /// This node's own registry: it registers there, and resolves through it when it has no
    /// rendezvous but itself.
    registry: Arc<Mutex<Registry>>,
    counter_floor: Document<CounterFloor>,
    own_name: Mutex<Option<Name>>,
}

impl RendezvousClient {
    /// Raises the node's counter past every seq it used before a restart.
    pub fn new(
        node: Node,
        servers: Vec<ServerState>,
        pins: Document<ServerPins>,
        registry: Arc<Mutex<Registry>>,
        counter_floor: Document<CounterFloor>,
        own_name: Option<Name>,
    ) -> Result<Self, StoreError> {
        node.raise_counter(counter_floor.read(|c| c.floor));
        let start = node.next_sequence();
        counter_floor.update(|c| c.floor = start + COUNTER_BLOCK)?;
        Ok(Self {
            node,
            servers: Mutex::new(servers),
            pins,
            registry,
            counter_floor,
            own_name: Mutex::new(own_name),
        })
    }

    /// Registers with every server, and with this node's own registry, and keeps each
    /// registration fresh, as tasks of the node.
    pub fn start(self: &Arc<Self>) {
        self.node.spawn(refresh_own_record(Arc::downgrade(self)));
        for index in 0..self.servers().len() {
            let seed = self.node.env().random_u64();
            self.node
                .spawn(keep_registered(Arc::downgrade(self), index, seed));
        }
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, Vec<ServerState>> {
        self.servers.lock().expect("server state lock")
    }

    pub fn own_name(&self) -> Option<Name> {
        self.own_name.lock().expect("own name lock").clone()
    }

    /// Where peers can reach this node: its specific listen address or, when it listens on
    /// all interfaces, each interface's address; plus what each rendezvous observed.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        let local = self.node.local_addr();
        let mut endpoints = if local.ip().is_unspecified() {
            self.node
                .env()
                .interface_addresses()
                .into_iter()
                .filter(|ip| ip.is_ipv4() == local.is_ipv4() || local.is_ipv6())
                .map(|ip| SocketAddr::new(ip, local.port()))
                .collect()
        } else {
            vec![local]
        };
        for observed in self.servers().iter().filter_map(|s| s.observed) {
            if !endpoints.contains(&observed) {
                endpoints.insert(0, observed);
            }
        }
        endpoints.truncate(MAX_ENDPOINTS);
        endpoints
    }

    /// What `status` shows of the rendezvous servers: whether this node is registered (with
    /// one server at least; always, when it is its own), and each server's state.
    pub fn status(&self) -> (bool, Value) {
        let servers = self.servers().clone();
        match servers.is_empty() {
            true => (true, json!("self")),
            false => (servers.iter().any(|s| s.registered), json!(servers)),
        }
    }

    /// Raises the counter past a seq a rendezvous holds for this node, unless that seq is
    /// absurdly far ahead (a hostile server must not exhaust the counter); true if raised.
    fn move_seq_past(&self, stored: u64) -> bool {
        const MAX_AHEAD_MICROS: u64 = 10 * 365 * 24 * 3600 * 1_000_000;
        let now = self.node.unix_now().saturating_mul(1_000_000);
        if stored >= now.saturating_add(MAX_AHEAD_MICROS) {
            tracing::warn!(
                stored,
                "a rendezvous holds a seq of this node's over ten years ahead; not following it"
            );
            return false;
        }
        tracing::info!(
            stored,
            "a newer record of this node was stored before; moving past its seq"
        );
        self.node.raise_counter(stored.saturating_add(1));
        true
    }

    /// A seq larger than every seq and control counter this node used, across restarts.
    fn next_seq(&self) -> u64 {
        let seq = self.node.next_sequence();
        if seq + COUNTER_BLOCK / 2 > self.counter_floor.read(|c| c.floor)
            && let Err(e) = self
                .counter_floor
                .update(|c| c.floor = c.floor.max(seq + COUNTER_BLOCK))
        {
            tracing::warn!(error = %e, "counter floor not saved: a clock stepped back before the next start could make old counters repeat");
        }
        seq
    }

    /// This node's signed record, claiming its name if `with_name`.
    pub fn own_record(&self, with_name: bool) -> Record {
        self.own_record_lasting(with_name, RECORD_LIFETIME)
    }

    /// Like [`RendezvousClient::own_record`], valid for `lifetime`.
    pub fn own_record_lasting(&self, with_name: bool, lifetime: Duration) -> Record {
        let seq = self.next_seq();
        let expires = self.node.unix_now() + lifetime.as_secs();
        let name = self.own_name().filter(|_| with_name);
        Record::sign(
            self.node.secret_identity(),
            &self.endpoints(),
            name.as_ref(),
            seq,
            expires,
        )
        .expect("endpoints are truncated to the record's maximum")
    }

    /// Whether `peer` is one of the rendezvous servers this node registers with.
    pub fn is_own_server(&self, peer: Address) -> bool {
        self.servers().iter().any(|s| s.address == Some(peer))
    }

    /// Whether this node's own registry is among the rendezvous it resolves through: only
    /// when it is its own rendezvous. Anyone may register at any ternd, so otherwise its
    /// registry answers the peers that use it, never this node's own look-ups.
    fn resolves_through_own_registry(&self) -> bool {
        let servers = self.servers();
        servers.is_empty()
            || servers
                .iter()
                .any(|s| s.address == Some(self.node.address()))
    }

    /// `target`'s record, from this node's registry or one of its rendezvous servers (which
    /// is returned too: it can introduce us); `Err` says why the servers that could not
    /// answer did not, when none had it.
    pub async fn find(&self, target: Address) -> Result<Option<(Record, Option<Address>)>, String> {
        if self.resolves_through_own_registry()
            && let Some(record) = self
                .registry
                .lock()
                .expect("registry lock")
                .lookup(self.node.unix_now(), target)
        {
            return Ok(Some((record.clone(), None)));
        }
        let mut answers = self.ask_servers(|server| lookup(&self.node, server, target));
        let mut errors = Vec::new();
        while let Some((spec, answer)) = answers.next().await {
            match answer {
                Ok((server, Some(record))) => return Ok(Some((record, Some(server)))),
                Ok((_, None)) => {}
                Err(e) => errors.push(format!("rendezvous {spec}: {e}")),
            }
        }
        match errors.is_empty() {
            true => Ok(None),
            false => Err(errors.join("; ")),
        }
    }

    /// The live record holding `name`, from this node's registry or its rendezvous servers.
    /// Two servers that answer with two keys are a conflict, never a pick. Pins are the
    /// caller's.
    pub async fn find_name(
        &self,
        name: &Name,
    ) -> Result<Option<(Record, Option<Address>)>, NameLookupError> {
        if self.resolves_through_own_registry() {
            let registry = self.registry.lock().expect("registry lock");
            if let Some(record) = registry.lookup_name(self.node.unix_now(), name) {
                return Ok(Some((record.clone(), None)));
            }
        }
        let mut answers = self.ask_servers(|server| lookup_name(&self.node, server, name));
        let mut errors = Vec::new();
        let mut first: Option<(String, Address, Record)> = None;
        let mut until = None;
        while let Some((spec, answer)) = next_before(&mut answers, until).await {
            match answer {
                Ok((server, Some(record))) => match &first {
                    None => {
                        until = Some(Instant::now() + NAME_ANSWERS_WAIT);
                        first = Some((spec, server, record));
                    }
                    Some((first_server, _, held)) if held.address() != record.address() => {
                        return Err(NameConflict {
                            name: name.clone(),
                            first: held.address(),
                            first_server: first_server.clone(),
                            second: record.address(),
                            second_server: spec,
                        }
                        .into());
                    }
                    Some((_, _, held)) if record.seq > held.seq => {
                        first = Some((spec, server, record))
                    }
                    Some(_) => {}
                },
                Ok((_, None)) => {}
                Err(e) => errors.push(format!("rendezvous {spec}: {e}")),
            }
        }
        match (first, errors.is_empty()) {
            (Some((_, server, record)), _) => Ok(Some((record, Some(server)))),
            (None, true) => Ok(None),
            (None, false) => Err(NameLookupError::Unanswered(errors.join("; "))),
        }
    }

    /// Asks every rendezvous at once; each answer as it comes, with the server's spec and,
    /// from a server reached, its address (else why it was not reached).
    fn ask_servers<'a, F, Fut>(
        &'a self,
        lookup: F,
    ) -> FuturesUnordered<impl Future<Output = (String, ServerAnswer)> + 'a>
    where
        F: Fn(Address) -> Fut + Copy + 'a,
        Fut: Future<Output = Result<Option<Record>, RendezvousError>> + 'a,
    {
        let servers: Vec<(String, Option<Address>)> = self
            .servers()
            .iter()
            .map(|s| (s.server.clone(), s.address))
            .collect();
        servers
            .into_iter()
            .map(|(spec, known)| async move {
                let answer = async {
                    // Not reached yet (the node just started, say): connect now rather than
                    // miss it.
                    let server = match known {
                        Some(server) => server,
                        None => self.reach_server(&spec).await?,
                    };
                    let record = lookup(server).await.map_err(|e| e.to_string())?;
                    Ok((server, record))
                };
                let answer = answer.await;
                (spec, answer)
            })
            .collect()
    }

    /// The rendezvous servers this node is registered with and reaches directly: where a
    /// peer that found it elsewhere (the DHT) asks for an introduction and a relay.
    pub fn reachable_through(&self) -> Vec<Reachable> {
        self.servers()
            .iter()
            .filter(|s| s.registered)
            .filter_map(|s| {
                let server = s.address?;
                let at = self.node.remote_of(server).filter(|at| !is_link(at))?;
                Some(Reachable { server, at })
            })
            .collect()
    }

    /// The address of a rendezvous given as `HOST:PORT`, connecting to it unless connected:
    /// over UDP, or when that gets no answer, over a TCP link to the same port.
    async fn reach_server(&self, spec: &str) -> Result<Address, String> {
        let known = self
            .servers()
            .iter()
            .find(|s| s.server == spec)
            .and_then(|s| s.address);
        if let Some(server) = known.filter(|&server| self.node.is_connected(server)) {
            return Ok(server);
        }
        let parsed = spec.parse::<ServerSpec>().map_err(|e| e.to_string())?;
        let host = &parsed.host;
        let at = self
            .node
            .env()
            .lookup_host(host.clone())
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        let over_udp = match tokio::time::timeout(UDP_FIRST, self.node.connect_any(at)).await {
            Ok(Ok(server)) => return self.reached_server(spec, &parsed, server),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer over UDP within {UDP_FIRST:?}"),
        };
        match self.node.connect_any_over_tcp(at).await {
            Ok(server) => {
                tracing::info!(server = %spec, "UDP gets no answer; reached the rendezvous over TCP");
                self.reached_server(spec, &parsed, server)
            }
            Err(e) => Err(format!("{over_udp}; over TCP: {e}")),
        }
    }

    /// Notes which node answered at a configured rendezvous, as soon as it answered: from
    /// then on it may introduce peers to this node. Unless it is not the key given or
    /// pinned for that server: then it is not used at all.
    fn reached_server(
        &self,
        spec: &str,
        parsed: &ServerSpec,
        server: Address,
    ) -> Result<Address, String> {
        let check = self.pins.read(|pins| pins.check(parsed, server));
        if let Some(refusal) = check.refusal(parsed, server) {
            tracing::error!(server = %spec, "{refusal}");
            self.node.disconnect(server);
            return Err(refusal);
        }
        if check == KeyCheck::Pin {
            let host = parsed.host.clone();
            // A key the operator gives replaces the pin; otherwise two first connections at
            // once pin the first key, and the second is checked again.
            let pinned = self.pins.update(|pins| match parsed.given {
                Some(given) => {
                    pins.pinned.insert(host, given);
                    given
                }
                None => *pins.pinned.entry(host).or_insert(server),
            });
            match pinned {
                Ok(pinned) if pinned != server => {
                    return self.reached_server(spec, parsed, server);
                }
                Ok(_) => {}
                // Still used; pinned on a later connection once the home is writable.
                Err(e) => {
                    tracing::warn!(server = %spec, error = %e, "the rendezvous's key is not pinned")
                }
            }
        }
        if let Some(state) = self.servers().iter_mut().find(|s| s.server == spec) {
            state.address = Some(server);
        }
        Ok(server)
    }

    /// Stores this node's record in its own registry, with its name unless another key
    /// registered here holds it.
    fn register_with_self(&self) -> Result<(), RegisterError> {
        let mut registry = self.registry.lock().expect("registry lock");
        let mut register =
            |with_name| match registry.register(self.node.unix_now(), self.own_record(with_name)) {
                // A record from before a clock step back, reloaded from the records file.
                Err(RegisterError::Stale { stored, .. }) if self.move_seq_past(stored) => {
                    registry.register(self.node.unix_now(), self.own_record(with_name))
                }
                other => other,
            };
        match register(true) {
            Err(RegisterError::NameTaken { .. }) => register(false),
            other => other,
        }
    }

    /// Claims `name` (or, with None, drops this node's name) at once, with this node's own
    /// registry and every rendezvous. A name another key holds is refused and the old name
    /// kept; servers that could not be reached are listed, and take the name at their next
    /// registration.
    pub async fn claim(&self, name: Option<Name>) -> Result<Vec<String>, NameHeld> {
        let previous = std::mem::replace(&mut *self.own_name.lock().expect("own name lock"), name);
        let mut held = match self.register_with_self() {
            Err(RegisterError::NameTaken { name, holder }) => Some(NameHeld {
                name,
                holder,
                server: "this node".into(),
            }),
            _ => None,
        };
        let mut pending = Vec::new();
        let specs: Vec<String> = self.servers().iter().map(|s| s.server.clone()).collect();
        for spec in specs {
            if held.is_some() {
                break;
            }
            let server = match self.reach_server(&spec).await {
                Ok(server) => server,
                Err(e) => {
                    pending.push(format!("rendezvous {spec}: {e}"));
                    continue;
                }
            };
            match register(&self.node, server, self.own_record(true)).await {
                Ok(_) => {}
                Err(RendezvousError::NameTaken { name, holder }) => {
                    held = Some(NameHeld {
                        name,
                        holder,
                        server: spec,
                    })
                }
                Err(e) => pending.push(format!("rendezvous {spec}: {e}")),
            }
        }
        match held {
            None => Ok(pending),
            Some(held) => {
                *self.own_name.lock().expect("own name lock") = previous;
                let _ = self.register_with_self();
                Err(held)
            }
        }
    }

    /// Learns this node's reflexive address by STUN to the rendezvous's UDP port, so that the
    /// record carries it; the registration's answer confirms it.
    async fn learn_reflexive(&self, spec: &str, server: Address) {
        let reflexive = match self.node.remote_of(server).filter(|at| !is_link(at)) {
            Some(at) => self.node.stun(at, false, STUN_WAIT).await.map(|r| r.mapped),
            None => Err(ProbeError::UnknownPeer(server)),
        };
        match reflexive {
            Ok(reflexive) => {
                tracing::debug!(server = %spec, %reflexive, "reflexive address from STUN");
                self.set_observed(spec, canonical(reflexive));
            }
            Err(e) => tracing::debug!(server = %spec, error = %e, "no reflexive address from STUN"),
        }
    }

    /// Registers this node's record (claiming its name if `with_name`) at `server`; if the
    /// server holds a newer one (made before this node's clock stepped back, or before its
    /// home was restored), moves past it and registers again.
    async fn register_at(&self, spec: &str, server: Address, with_name: bool) -> Registered {
        let registered = match register(&self.node, server, self.own_record(with_name)).await {
            Err(RendezvousError::Stale { stored_seq }) if self.move_seq_past(stored_seq) => {
                register(&self.node, server, self.own_record(with_name)).await
            }
            other => other,
        };
        match registered {
            Ok(observed) => {
                let observed = canonical(observed);
                let observed_known = self.endpoints().contains(&observed);
                self.set_observed(spec, observed);
                Registered::Stored { observed_known }
            }
            Err(e @ RendezvousError::NameTaken { .. }) if with_name => {
                Registered::NameTaken(e.to_string())
            }
            Err(e) => Registered::Failed(e.to_string()),
        }
    }

    /// Finds out what kind of NAT this node sits behind through the server at `index`, once
    /// per address the server observes for this node (a new address may mean a new NAT), in
    /// a task of its own: the tests wait for answers that a NAT may never let in.
    fn discover_nat_if_due(self: &Arc<Self>, index: usize, server: Address) {
        let Some(at) = self.node.remote_of(server).filter(|at| !is_link(at)) else {
            return;
        };
        {
            let mut servers = self.servers();
            let state = &mut servers[index];
            if state.observed.is_none() || state.nat_observed == state.observed {
                return;
            }
            state.nat_observed = state.observed;
        }
        let client = Arc::downgrade(self);
        let node = self.node.clone();
        self.node.spawn(async move {
            let behaviour = node.discover_nat(at, NAT_TEST_WAIT).await;
            if let Some(c) = client.upgrade() {
                tracing::info!(nat = behaviour.kind(), mapping = ?behaviour.mapping, filtering = ?behaviour.filtering, "NAT behaviour discovered");
                c.servers()[index].nat = Some(behaviour);
            }
        });
    }

    /// The NAT this node sits behind, as the first server that could tell saw it.
    pub fn nat(&self) -> NatBehaviour {
        self.servers()
            .iter()
            .filter_map(|s| s.nat)
            .find(|n| *n != NatBehaviour::UNKNOWN)
            .unwrap_or(NatBehaviour::UNKNOWN)
    }

    fn set_observed(&self, spec: &str, observed: SocketAddr) {
        if let Some(state) = self.servers().iter_mut().find(|s| s.server == spec) {
            state.observed = Some(observed);
        }
    }

    /// Shows a registration's state in `status`, and logs its changes: once per failure
    /// streak, so that a peer cannot make this node flood its log.
    fn note_registration(
        &self,
        index: usize,
        machine: &Registration,
        server: Option<Address>,
        (was_registered, was_failing): (bool, bool),
    ) {
        let mut servers = self.servers();
        let state = &mut servers[index];
        let spec = state.server.clone();
        if machine.is_registered() {
            state.address = server;
            if !was_registered {
                tracing::info!(server = %spec, rendezvous = ?server, observed = ?state.observed, "registered");
            }
        }
        if let Some(e) = machine.last_error()
            && !was_failing
        {
            tracing::warn!(server = %spec, error = %e, "cannot register with rendezvous; retrying");
        }
        let refused = machine.name_refused().map(str::to_owned);
        if refused.is_some() && state.name_refused != refused {
            tracing::error!(server = %spec, reason = refused.as_deref().unwrap_or_default(), "name not taken");
        }
        state.registered = machine.is_registered();
        state.last_error = machine.last_error().map(str::to_owned);
        state.name_refused = refused;
    }
}

/// Keeps this node's own record in its own registry fresh, so peers that use this node as
/// their rendezvous can find it.
async fn refresh_own_record(client: Weak<RendezvousClient>) {
    loop {
        let Some(c) = client.upgrade() else { return };
        if let Err(e) = c.register_with_self() {
            tracing::warn!(error = %e, "own record not stored");
        }
        drop(c);
        tokio::time::sleep(REFRESH_INTERVAL).await;
    }
}

/// Registers with one rendezvous server and keeps the registration fresh: the shell of its
/// [`Registration`] machine, which decides every step and wait.
async fn keep_registered(client: Weak<RendezvousClient>, index: usize, jitter_seed: u64) {
    let mut machine = Registration::new(jitter_seed);
    let mut server = None;
    // Watch the connection for loss only after a round that registered: once lost, the
    // machine's back-off is the wait.
    let mut watch_connection = false;
    loop {
        let Some(c) = client.upgrade() else { return };
        let spec = c.servers()[index].server.clone();
        let before = (machine.is_registered(), machine.last_error().is_some());
        while let Some(step) = machine.poll_step() {
            match step {
                Step::Reach => {
                    let reached = c.reach_server(&spec).await;
                    server = reached.as_ref().ok().copied();
                    machine.handle_reached(Instant::now(), reached.map(|_| ()));
                }
                Step::Stun => {
                    if let Some(server) = server {
                        c.learn_reflexive(&spec, server).await;
                        c.discover_nat_if_due(index, server);
                    }
                    machine.handle_stunned();
                }
                Step::Register { with_name } => {
                    let outcome = match server {
                        Some(server) => c.register_at(&spec, server, with_name).await,
                        None => Registered::Failed("the rendezvous is not reached".into()),
                    };
                    machine.handle_registered(Instant::now(), outcome);
                }
            }
            watch_connection = machine.is_registered();
        }
        c.note_registration(index, &machine, server, before);
        let lost = match (watch_connection, server) {
            (true, Some(server)) => Some(c.node.disconnected(server)),
            _ => None,
        };
        drop(c);
        let at = machine
            .poll_timeout()
            .expect("a registration with no step to do waits");
        match lost {
            Some(lost) => tokio::select! {
                biased;
                _ = tokio::time::sleep_until(at) => {}
                _ = lost => {
                    tracing::info!(server = %spec, "connection to the rendezvous lost; registering again");
                    watch_connection = false;
                    machine.handle_connection_lost(Instant::now());
                }
            },
            None => tokio::time::sleep_until(at).await,
        }
        machine.handle_timeout(Instant::now());
    }
}
