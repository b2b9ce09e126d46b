//! What kind of NAT this node sits behind, from what a rendezvous saw (RFC 5780's tests,
//! those one server address allows): the address this node's socket is mapped to towards
//! the rendezvous's port and towards its other port, and whether an answer from the other
//! port gets in. Only ports differ between the two server sockets, so a NAT that maps or
//! filters by the remote's address alone looks endpoint-independent here.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::transport::paths::canonical;

/// How the NAT maps this node's socket to a public endpoint (RFC 4787 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// No NAT: the rendezvous sees this node's own address.
    None,
    /// One public endpoint whatever the destination: hole punching meets it.
    EndpointIndependent,
    /// A new public port per destination (a "symmetric" NAT): hole punching alone cannot
    /// meet it.
    EndpointDependent,
    Unknown,
}

/// What the NAT lets in (RFC 4787 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Filtering {
    /// Only from the endpoints this node sent to.
    AddressAndPortDependent,
    /// Also from another port of an address this node sent to (and maybe from anyone: one
    /// server address cannot tell).
    NotPortDependent,
    Unknown,
}

/// The NAT behaviour seen through one rendezvous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatBehaviour {
    pub mapping: Mapping,
    pub filtering: Filtering,
}

/// `{"kind", "mapping", "filtering"}`, as `status` shows it.
impl Serialize for NatBehaviour {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut fields = serializer.serialize_struct("NatBehaviour", 3)?;
        fields.serialize_field("kind", self.kind())?;
        fields.serialize_field("mapping", &self.mapping)?;
        fields.serialize_field("filtering", &self.filtering)?;
        fields.end()
    }
}

impl NatBehaviour {
    pub const UNKNOWN: Self = Self {
        mapping: Mapping::Unknown,
        filtering: Filtering::Unknown,
    };

    /// The usual name for it: "none", "cone" (lets in what any port of a contacted address
    /// sends), "port-restricted" (a home router), "symmetric", or "unknown".
    pub fn kind(&self) -> &'static str {
        match (self.mapping, self.filtering) {
            (Mapping::None, _) => "none",
            (Mapping::EndpointDependent, _) => "symmetric",
            (Mapping::EndpointIndependent, Filtering::NotPortDependent) => "cone",
            (Mapping::EndpointIndependent, Filtering::AddressAndPortDependent) => "port-restricted",
            _ => "unknown",
        }
    }
}

/// What this node's socket showed the rendezvous.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// The node's socket as it knows it (its address may be unspecified).
    pub local: Option<SocketAddr>,
    /// This host's interface addresses.
    pub interfaces: Vec<IpAddr>,
    /// The mapped address towards the rendezvous's port.
    pub mapped: Option<SocketAddr>,
    /// The mapped address towards its other port, if it has one and answered.
    pub mapped_other: Option<SocketAddr>,
    /// Whether an answer from the other port got in; None if not asked.
    pub other_port_got_in: Option<bool>,
}

pub fn classify(seen: &Observations) -> NatBehaviour {
    let Some(mapped) = seen.mapped.map(canonical) else {
        return NatBehaviour::UNKNOWN;
    };
    let own = seen.local.map(canonical).is_some_and(|local| {
        local.port() == mapped.port()
            && (local.ip() == mapped.ip()
                || (local.ip().is_unspecified() && seen.interfaces.contains(&mapped.ip())))
    });
    let mapping = match (own, seen.mapped_other.map(canonical)) {
        (true, _) => Mapping::None,
        (false, Some(other)) if other == mapped => Mapping::EndpointIndependent,
        (false, Some(_)) => Mapping::EndpointDependent,
        (false, None) => Mapping::Unknown,
    };
    let filtering = match seen.other_port_got_in {
        Some(true) => Filtering::NotPortDependent,
        Some(false) => Filtering::AddressAndPortDependent,
        None => Filtering::Unknown,
    };
    NatBehaviour { mapping, filtering }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_kinds_of_the_lab_are_told_apart() {
        let behind = |mapped_other: &str, got_in| Observations {
            local: at("0.0.0.0:7440"),
            interfaces: vec!["10.1.0.2".parse().unwrap()],
            mapped: at("198.51.100.2:7440"),
            mapped_other: at(mapped_other),
            other_port_got_in: Some(got_in),
        };
        assert_eq!(
            classify(&behind("198.51.100.2:7440", false)).kind(),
            "port-restricted"
        );
        assert_eq!(classify(&behind("198.51.100.2:7440", true)).kind(), "cone");
        assert_eq!(
            classify(&behind("198.51.100.2:31337", false)).kind(),
            "symmetric"
        );
        let public = Observations {
            mapped: at("10.1.0.2:7440"),
            ..behind("10.1.0.2:7440", true)
        };
        assert_eq!(classify(&public).kind(), "none");
        let bound = Observations {
            local: at("203.0.113.5:7440"),
            interfaces: vec![],
            mapped: at("[::ffff:203.0.113.5]:7440"),
            ..Observations::default()
        };
        assert_eq!(classify(&bound).mapping, Mapping::None);
    }

    #[test]
    fn what_was_not_seen_stays_unknown() {
        assert_eq!(classify(&Observations::default()), NatBehaviour::UNKNOWN);
        let one_port = Observations {
            local: at("0.0.0.0:7440"),
            mapped: at("198.51.100.2:7440"),
            ..Observations::default()
        };
        assert_eq!(classify(&one_port), NatBehaviour::UNKNOWN);
        assert_eq!(classify(&one_port).kind(), "unknown");
    }
}
