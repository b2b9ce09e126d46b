//! Which key each configured rendezvous server must answer with. The operator may give it
//! (`--rendezvous ADDRESS@HOST:PORT`); otherwise the first key that answers at a server is
//! pinned in the home (`servers.json`), like names are, so that whoever later takes over the
//! server's IP and port cannot step in as this node's rendezvous: introduce peers to it, hold
//! its record, answer its look-ups.

use std::collections::BTreeMap;

use tern_proto::Address;

pub const SERVERS_FILE: &str = "servers.json";

/// A configured server: `HOST:PORT`, or `ADDRESS@HOST:PORT` with the key's address given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    pub host: String,
    pub given: Option<Address>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "bad rendezvous {spec:?}: {detail}; give HOST:PORT or ADDRESS@HOST:PORT (ADDRESS as \
     `ternd id` prints it on the server)"
)]
pub struct SpecError {
    spec: String,
    detail: String,
}

impl std::str::FromStr for ServerSpec {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let error = |detail: String| SpecError {
            spec: spec.into(),
            detail,
        };
        let (given, host) = match spec.split_once('@') {
            Some((address, host)) => (
                Some(address.parse().map_err(|e| error(format!("{e}")))?),
                host,
            ),
            None => (None, spec),
        };
        let well_formed = host.rsplit_once(':').is_some_and(|(h, p)| {
            // An IPv6 host needs brackets: `[::1]:7440`.
            let bracketed = h.starts_with('[') && h.ends_with(']');
            !h.is_empty() && (bracketed || !h.contains(':')) && p.parse::<u16>().is_ok()
        });
        if !well_formed {
            return Err(error(format!("{host:?} is not HOST:PORT")));
        }
        Ok(Self {
            host: host.into(),
            given,
        })
    }
}

/// `servers.json`: the key each server answered with first, by `HOST:PORT`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerPins {
    #[serde(default)]
    pub pinned: BTreeMap<String, Address>,
}

/// What to make of `answered` at a server, given its spec and the pins.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// The expected key (given or pinned earlier).
    Matches,
    /// No key known yet, or the operator gave a new one: pin this one.
    Pin,
    /// Someone else answers there.
    Mismatch { expected: Address, given: bool },
}

impl ServerPins {
    pub fn check(&self, spec: &ServerSpec, answered: Address) -> KeyCheck {
        let pinned = self.pinned.get(&spec.host).copied();
        match spec.given.or(pinned) {
            Some(expected) if expected != answered => KeyCheck::Mismatch {
                expected,
                given: spec.given.is_some(),
            },
            _ if pinned == Some(answered) => KeyCheck::Matches,
            _ => KeyCheck::Pin,
        }
    }
}

impl KeyCheck {
    /// Why a server is not used, and what the operator can do about it.
    pub fn refusal(&self, spec: &ServerSpec, answered: Address) -> Option<String> {
        let KeyCheck::Mismatch { expected, given } = self else {
            return None;
        };
        let host = &spec.host;
        Some(match given {
            true => format!(
                "the rendezvous at {host} answered as {answered}, not as the {expected} it was \
                 given as; not using it (check the address `ternd id` prints on the server)"
            ),
            false => format!(
                "the rendezvous at {host} answered as {answered}, but {expected} answered there \
                 first and was pinned ({SERVERS_FILE}); not using it. If the server's key changed \
                 on purpose, start ternd with --rendezvous {answered}@{host}"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(n: u64) -> Address {
        Address::from_bytes(n.to_be_bytes()[2..].try_into().unwrap())
    }

    #[test]
    fn specs_parse_with_and_without_a_given_address() {
        let plain: ServerSpec = "rv.example:7440".parse().unwrap();
        assert_eq!(plain.given, None);
        assert_eq!(plain.host, "rv.example:7440");
        let given: ServerSpec = format!("{}@127.0.0.1:9", address(5)).parse().unwrap();
        assert_eq!(given.given, Some(address(5)));
        assert_eq!(given.host, "127.0.0.1:9");
        assert_eq!(
            "[::1]:7440".parse::<ServerSpec>().unwrap().host,
            "[::1]:7440"
        );
        for bad in [
            "nope",
            "zz@127.0.0.1:9",
            ":9",
            "host:port",
            "host:70000",
            "::1:7440",
        ] {
            assert!(bad.parse::<ServerSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_key_is_pinned_and_a_later_one_refused_unless_the_operator_gives_it() {
        let plain: ServerSpec = "127.0.0.1:9".parse().unwrap();
        let mut pins = ServerPins::default();
        assert_eq!(pins.check(&plain, address(1)), KeyCheck::Pin);
        pins.pinned.insert(plain.host.clone(), address(1));
        assert_eq!(pins.check(&plain, address(1)), KeyCheck::Matches);
        let other = pins.check(&plain, address(2));
        assert!(matches!(other, KeyCheck::Mismatch { given: false, .. }));
        assert!(
            other
                .refusal(&plain, address(2))
                .unwrap()
                .contains("--rendezvous")
        );

        let given: ServerSpec = format!("{}@127.0.0.1:9", address(2)).parse().unwrap();
        assert_eq!(pins.check(&given, address(2)), KeyCheck::Pin);
        assert!(matches!(
            pins.check(&given, address(1)),
            KeyCheck::Mismatch { given: true, .. }
        ));
    }
}
