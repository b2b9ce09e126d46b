//! NAT boxes of the simulated network, in RFC 4787 terms: how a NAT maps an inside host's
//! flows to public ports (mapping) and which outside packets it lets back in (filtering),
//! whether it keeps the inside port, how long an idle mapping lives, and whether it passes
//! UDP at all. Presets match the kernel lab's kinds.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use tokio::time::Instant;

/// What a mapping or a filter depends on, besides the inside host's address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependence {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatConfig {
    pub mapping: Dependence,
    pub filtering: Dependence,
    /// The public port is the inside port when that is free.
    pub preserve_port: bool,
    /// An idle mapping is forgotten after this long.
    pub timeout: Duration,
    /// All UDP is dropped (TCP still passes).
    pub blocks_udp: bool,
    /// An inside host may reach another through the NAT's public address.
    pub hairpin: bool,
}

impl NatConfig {
    /// Endpoint-independent mapping and filtering.
    pub fn full_cone() -> Self {
        Self {
            mapping: Dependence::EndpointIndependent,
            filtering: Dependence::EndpointIndependent,
            preserve_port: true,
            timeout: Duration::from_secs(30),
            blocks_udp: false,
            hairpin: false,
        }
    }

    /// Linux masquerade: endpoint-independent mapping keeping the port, and only replies
    /// from where the host sent to.
    pub fn home_router() -> Self {
        Self {
            filtering: Dependence::AddressAndPortDependent,
            ..Self::full_cone()
        }
    }

    /// A new public port for every destination (`masquerade random`).
    pub fn symmetric() -> Self {
        Self {
            mapping: Dependence::AddressAndPortDependent,
            filtering: Dependence::AddressAndPortDependent,
            preserve_port: false,
            ..Self::full_cone()
        }
    }

    pub fn udp_blocked() -> Self {
        Self {
            blocks_udp: true,
            ..Self::home_router()
        }
    }
}

#[derive(Debug)]
struct Mapping {
    inside: SocketAddr,
    /// What else the mapping is keyed on (the destination's address, or address and port).
    towards: Option<SocketAddr>,
    public_port: u16,
    /// Where the inside host sent through this mapping: what filtering lets back in.
    sent_to: Vec<SocketAddr>,
    last_used: Instant,
}

/// One NAT: a public address and the sites's private /24 behind it.
#[derive(Debug)]
pub struct Nat {
    pub config: NatConfig,
    pub public: Ipv4Addr,
    inside_prefix: [u8; 3],
    mappings: Vec<Mapping>,
    next_port: u16,
}

/// Ports handed out when the inside port is not kept (or taken).
const FIRST_PUBLIC_PORT: u16 = 20000;

impl Nat {
    pub fn new(config: NatConfig, public: Ipv4Addr, inside_prefix: [u8; 3]) -> Self {
        Self {
            config,
            public,
            inside_prefix,
            mappings: Vec::new(),
            next_port: FIRST_PUBLIC_PORT,
        }
    }

    pub fn is_inside(&self, ip: Ipv4Addr) -> bool {
        ip.octets()[..3] == self.inside_prefix
    }

    /// An outbound packet from `inside` to `to`: the public source it leaves with, or None
    /// when the NAT drops it.
    pub fn outbound(
        &mut self,
        now: Instant,
        inside: SocketAddr,
        to: SocketAddr,
    ) -> Option<SocketAddr> {
        if self.config.blocks_udp {
            return None;
        }
        self.expire(now);
        let towards = key(self.config.mapping, to);
        let index = match self
            .mappings
            .iter()
            .position(|m| m.inside == inside && m.towards == towards)
        {
            Some(index) => index,
            None => {
                let public_port = self.free_port(inside.port());
                self.mappings.push(Mapping {
                    inside,
                    towards,
                    public_port,
                    sent_to: Vec::new(),
                    last_used: now,
                });
                self.mappings.len() - 1
            }
        };
        let mapping = &mut self.mappings[index];
        mapping.last_used = now;
        if !mapping.sent_to.contains(&to) {
            mapping.sent_to.push(to);
        }
        Some(SocketAddr::V4(SocketAddrV4::new(
            self.public,
            mapping.public_port,
        )))
    }

    /// An inbound packet from `from` to the public `port`: the inside address it goes to, or
    /// None when no mapping lets it in.
    pub fn inbound(&mut self, now: Instant, from: SocketAddr, port: u16) -> Option<SocketAddr> {
        if self.config.blocks_udp {
            return None;
        }
        self.expire(now);
        let filtering = self.config.filtering;
        let mapping = self.mappings.iter_mut().find(|m| {
            m.public_port == port
                && match filtering {
                    Dependence::EndpointIndependent => true,
                    Dependence::AddressDependent => m.sent_to.iter().any(|t| t.ip() == from.ip()),
                    Dependence::AddressAndPortDependent => m.sent_to.contains(&from),
                }
        })?;
        mapping.last_used = now;
        Some(mapping.inside)
    }

    /// Gives every mapping a new public port, as a NAT that rebound does; what filtering
    /// lets back in stays with the mapping.
    pub fn rebind(&mut self) {
        let old: Vec<u16> = self.mappings.iter().map(|m| m.public_port).collect();
        for (index, port) in old.into_iter().enumerate() {
            let fresh = loop {
                let candidate = self.next_port;
                self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_PUBLIC_PORT);
                let taken = self.mappings.iter().any(|m| m.public_port == candidate);
                if candidate != port && !taken {
                    break candidate;
                }
            };
            self.mappings[index].public_port = fresh;
        }
    }

    fn expire(&mut self, now: Instant) {
        let timeout = self.config.timeout;
        self.mappings.retain(|m| now - m.last_used < timeout);
    }

    fn free_port(&mut self, inside_port: u16) -> u16 {
        let taken = |mappings: &[Mapping], port| mappings.iter().any(|m| m.public_port == port);
        if self.config.preserve_port && !taken(&self.mappings, inside_port) {
            return inside_port;
        }
        loop {
            let port = self.next_port;
            self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_PUBLIC_PORT);
            if !taken(&self.mappings, port) {
                return port;
            }
        }
    }
}

fn key(dependence: Dependence, to: SocketAddr) -> Option<SocketAddr> {
    match dependence {
        Dependence::EndpointIndependent => None,
        Dependence::AddressDependent => Some(SocketAddr::new(to.ip(), 0)),
        Dependence::AddressAndPortDependent => Some(to),
    }
}

/// The NATs of a network, keyed by public address.
pub type Nats = BTreeMap<Ipv4Addr, Nat>;

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_kind_maps_and_filters_as_its_name_says() {
        let now = Instant::now();
        let host = addr("192.168.1.2:7440");
        let (a, b) = (addr("203.0.113.1:7440"), addr("203.0.113.2:9"));
        let public = Ipv4Addr::new(203, 0, 113, 101);

        let mut cone = Nat::new(NatConfig::full_cone(), public, [192, 168, 1]);
        assert_eq!(
            cone.outbound(now, host, a),
            Some(addr("203.0.113.101:7440"))
        );
        assert_eq!(
            cone.outbound(now, host, b),
            Some(addr("203.0.113.101:7440"))
        );
        assert_eq!(
            cone.inbound(now, addr("198.51.100.9:1"), 7440),
            Some(host),
            "anyone"
        );

        let mut home = Nat::new(NatConfig::home_router(), public, [192, 168, 1]);
        let out = home.outbound(now, host, a).unwrap();
        assert_eq!(
            home.outbound(now, host, b),
            Some(out),
            "one mapping for all"
        );
        assert_eq!(home.inbound(now, a, out.port()), Some(host));
        assert_eq!(home.inbound(now, addr("203.0.113.1:1"), out.port()), None);

        let mut symmetric = Nat::new(NatConfig::symmetric(), public, [192, 168, 1]);
        let to_a = symmetric.outbound(now, host, a).unwrap();
        let to_b = symmetric.outbound(now, host, b).unwrap();
        assert_ne!(to_a, to_b, "a mapping per destination");
        assert_eq!(symmetric.inbound(now, b, to_a.port()), None);
        assert_eq!(symmetric.inbound(now, b, to_b.port()), Some(host));

        let mut blocked = Nat::new(NatConfig::udp_blocked(), public, [192, 168, 1]);
        assert_eq!(blocked.outbound(now, host, a), None);
    }

    #[test]
    fn idle_mappings_expire_and_a_rebind_moves_them_to_new_ports() {
        let now = Instant::now();
        let host = addr("192.168.1.2:7440");
        let a = addr("203.0.113.1:7440");
        let mut home = Nat::new(
            NatConfig::home_router(),
            Ipv4Addr::new(203, 0, 113, 101),
            [192, 168, 1],
        );
        let out = home.outbound(now, host, a).unwrap();
        assert_eq!(
            home.inbound(now + Duration::from_secs(29), a, out.port()),
            Some(host)
        );
        let later = now + Duration::from_secs(29 + 30);
        assert_eq!(home.inbound(later, a, out.port()), None, "expired");
        home.outbound(later, host, a);
        home.rebind();
        assert_eq!(home.inbound(later, a, out.port()), None, "the old port");
        let moved = home.outbound(later, host, a).unwrap();
        assert_ne!(moved.port(), out.port());
        assert_eq!(
            home.inbound(later, a, moved.port()),
            Some(host),
            "the new port"
        );
    }
}
