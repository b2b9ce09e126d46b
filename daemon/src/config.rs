//! A daemon's settings ([`DaemonConfig`]) and `ternd --config FILE`: the TOML keys a node
//! takes from a file (flags win over them), and the limits an operator may set. Unknown keys
//! are refused, so a typo never goes unnoticed.

use std::net::SocketAddr;
use std::time::Duration;

use tern_proto::Name;

use crate::TransportConfig;
use crate::dht::DhtSettings;
use crate::discovery::{DEFAULT_ORDER, Source};
use crate::home::Home;
use crate::rendezvous;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub home: Home,
    pub listen: SocketAddr,
    /// `HOST:PORT` of each rendezvous; empty: this node is its own.
    pub rendezvous: Vec<String>,
    /// The name to claim (`--hostname`); None keeps the name saved in the home, if any.
    pub hostname: Option<Name>,
    /// How long a name stays held after its holder's record lapsed (this node as rendezvous).
    pub name_grace: Duration,
    pub transport: TransportConfig,
    /// Local API clients connected at once; more wait.
    pub max_api_clients: usize,
    /// The Mainline DHT, when on (`--dht`): off by default.
    pub dht: Option<DhtSettings>,
    /// Where peers are looked up, in order.
    pub lookup: Vec<Source>,
}

impl DaemonConfig {
    /// The defaults `ternd` uses, for a node in `home` on `listen`.
    pub fn new(home: Home, listen: SocketAddr, rendezvous: Vec<String>) -> Self {
        Self {
            home,
            listen,
            rendezvous,
            hostname: None,
            name_grace: Duration::from_secs(rendezvous::registry::DEFAULT_NAME_GRACE),
            transport: TransportConfig::default(),
            max_api_clients: 1024,
            dht: None,
            lookup: DEFAULT_ORDER.to_vec(),
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub rendezvous: Vec<String>,
    pub hostname: Option<Name>,
    pub log_format: Option<String>,
    /// As a rendezvous: days a name stays held after its holder's record lapsed.
    pub name_grace_days: Option<u64>,
    /// Join the Mainline DHT (publish this node, resolve peers through it).
    pub dht: Option<bool>,
    /// DHT bootstrap nodes, `HOST:PORT` (none: the public ones).
    #[serde(default)]
    pub dht_bootstrap: Vec<String>,
    /// Where peers are looked up, in order: "rendezvous", "dht" (default: both, in that
    /// order; the DHT only when on).
    pub lookup: Option<Vec<Source>>,
    #[serde(default)]
    pub limits: Limits,
}

/// What one node accepts at most; every limit hit is counted in `ternctl status`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Verified connections in all (default 4096).
    pub connections: Option<usize>,
    /// Verified connections per identity (default 4).
    pub connections_per_peer: Option<usize>,
    /// Concurrent streams one peer may open on a connection (default 1024).
    pub streams_per_peer: Option<u32>,
    /// Inbound handshakes in progress (default 256).
    pub pending_handshakes: Option<usize>,
    /// As a relay: packets per second one peer may have relayed (default 50000).
    pub relay_packets_per_second: Option<f64>,
    /// Local API clients connected at once (default 1024).
    pub api_clients: Option<usize>,
}

impl ConfigFile {
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Applies what the file says to `config` (the flags were applied, or will win, by the
    /// caller).
    pub fn apply(&self, config: &mut DaemonConfig) {
        if self.dht == Some(true) && config.dht.is_none() {
            config.dht = Some(DhtSettings {
                bootstrap: self.dht_bootstrap.clone(),
            });
        }
        if let Some(lookup) = &self.lookup {
            config.lookup = lookup.clone();
        }
        if let Some(days) = self.name_grace_days {
            config.name_grace = Duration::from_secs(days.saturating_mul(24 * 3600));
        }
        let (limits, transport) = (&self.limits, &mut config.transport);
        if let Some(n) = limits.connections {
            transport.max_connections = n;
        }
        if let Some(n) = limits.connections_per_peer {
            transport.max_connections_per_peer = n.max(1);
        }
        if let Some(n) = limits.streams_per_peer {
            transport.max_streams_per_peer = n;
        }
        if let Some(n) = limits.pending_handshakes {
            transport.max_handshakes = n.max(1);
        }
        if let Some(rate) = limits.relay_packets_per_second {
            transport.relay_packets_per_second = rate.max(0.0);
        }
        if let Some(n) = limits.api_clients {
            config.max_api_clients = n.max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_file_and_unknown_keys_are_refused() {
        let file = ConfigFile::parse(
            "listen = \"127.0.0.1:0\"\n[limits]\nconnections = 10\nconnections_per_peer = 0\n",
        )
        .unwrap();
        let home = crate::home::Home::at("/nonexistent");
        let mut config = DaemonConfig::new(home, "127.0.0.1:0".parse().unwrap(), vec![]);
        file.apply(&mut config);
        assert_eq!(config.transport.max_connections, 10);
        assert_eq!(config.transport.max_connections_per_peer, 1);
        assert!(config.dht.is_none());
        assert_eq!(config.lookup, DEFAULT_ORDER);
        let dht = ConfigFile::parse(
            "dht = true\ndht_bootstrap = [\"127.0.0.1:6881\"]\nlookup = [\"dht\"]\n",
        )
        .unwrap();
        dht.apply(&mut config);
        assert_eq!(config.dht.unwrap().bootstrap, ["127.0.0.1:6881"]);
        assert_eq!(config.lookup, [Source::Dht]);
        let e = ConfigFile::parse("[limits]\nconections = 1\n").unwrap_err();
        assert!(e.to_string().contains("conections"), "{e}");
    }
}
