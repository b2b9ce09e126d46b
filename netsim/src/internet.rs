//! A small internet in network namespaces: a public segment (TEST-NET-3, 203.0.113.0/24) on
//! one bridge, public hosts on it, and sites whose one host sits behind a NAT router of a
//! chosen kind. Everything lives in the [`Lab`]'s namespaces and disappears with it.
//!
//! The NAT kinds follow RFC 4787 terms, built from Linux conntrack and nftables (see
//! ../shared/NOTES.md, "The kernel NAT lab"):
//!
//! | kind | mapping | filtering |
//! |---|---|---|
//! | `FullCone` | endpoint-independent | endpoint-independent (learned DNAT map) |
//! | `HomeRouter` | endpoint-independent (masquerade keeps the port) | address-and-port-dependent |
//! | `BareMasquerade` | as `HomeRouter`, without dropping unsolicited traffic to the router: a hostile case that breaks simultaneous punching | |
//! | `CarrierGrade` | two stacked `HomeRouter`s (100.64.0.0/10 between them) | |
//! | `Symmetric` | endpoint-dependent (`masquerade random`) | address-and-port-dependent |
//! | `UdpBlocked` | TCP masqueraded, UDP dropped | |

use std::net::Ipv4Addr;

use crate::lab::{Lab, LabError, Namespace};

const BRIDGE: &str = "br0";
const PUBLIC_PREFIX: [u8; 3] = [203, 0, 113];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    FullCone,
    HomeRouter,
    BareMasquerade,
    CarrierGrade,
    Symmetric,
    UdpBlocked,
}

/// A host of the lab internet: its namespace and the address it has inside it.
#[derive(Debug, Clone)]
pub struct Host {
    pub namespace: Namespace,
    pub address: Ipv4Addr,
}

/// A site's router, for tests that need to act on it (cut the link, move its address).
#[derive(Debug, Clone)]
pub struct Router {
    pub namespace: Namespace,
    pub public: Ipv4Addr,
}

pub struct Internet {
    lab: Lab,
    core: Namespace,
    next_public: u8,
    next_site: u8,
}

impl Internet {
    pub fn new() -> Result<Self, LabError> {
        let mut lab = Lab::new();
        let core = lab.namespace("core")?;
        core.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        core.ip(&["link", "set", BRIDGE, "up"])?;
        Ok(Self {
            lab,
            core,
            next_public: 1,
            next_site: 1,
        })
    }

    fn public_address(&mut self) -> Ipv4Addr {
        let [a, b, c] = PUBLIC_PREFIX;
        self.next_public += 1;
        Ipv4Addr::new(a, b, c, self.next_public)
    }

    /// The namespace holding the public segment's bridge.
    pub fn core(&self) -> &Namespace {
        &self.core
    }

    /// A host with a public address, no NAT.
    pub fn public_host(&mut self, label: &str) -> Result<Host, LabError> {
        let namespace = self.lab.namespace(label)?;
        let address = self.public_address();
        self.lab.plug(
            &self.core,
            BRIDGE,
            &namespace,
            "wan0",
            &format!("{address}/24"),
        )?;
        Ok(Host { namespace, address })
    }

    /// A host behind a NAT router of `kind` (two routers for `CarrierGrade`).
    pub fn behind_nat(&mut self, label: &str, kind: NatKind) -> Result<(Host, Router), LabError> {
        let site = self.next_site;
        self.next_site += 1;
        let router_ns = self.lab.namespace(&format!("{label}-nat"))?;
        let public = self.public_address();
        self.lab.plug(
            &self.core,
            BRIDGE,
            &router_ns,
            "wan0",
            &format!("{public}/24"),
        )?;
        let router = Router {
            namespace: router_ns,
            public,
        };
        let (inner_router, inner_kind) = if kind == NatKind::CarrierGrade {
            // The carrier's router faces the internet; the home router sits in 100.64/10.
            router.configure(NatKind::HomeRouter)?;
            let home = self.lab.namespace(&format!("{label}-home"))?;
            let carrier_side = Ipv4Addr::new(100, 64, site, 1);
            let home_wan = Ipv4Addr::new(100, 64, site, 2);
            self.lab.link(
                &router.namespace,
                &format!("{carrier_side}/24"),
                &home,
                &format!("{home_wan}/24"),
            )?;
            rename_link_towards(&home, home_wan, "wan0")?;
            home.ip(&["route", "add", "default", "via", &carrier_side.to_string()])?;
            let home_router = Router {
                namespace: home,
                public: home_wan,
            };
            (home_router, NatKind::HomeRouter)
        } else {
            (router.clone(), kind)
        };
        inner_router.configure(inner_kind)?;
        let namespace = self.lab.namespace(label)?;
        let gateway = Ipv4Addr::new(10, site, 0, 1);
        let address = Ipv4Addr::new(10, site, 0, 2);
        self.lab.link(
            &inner_router.namespace,
            &format!("{gateway}/24"),
            &namespace,
            &format!("{address}/24"),
        )?;
        namespace.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        Ok((Host { namespace, address }, router))
    }
}

/// Gives the interface that holds `address` a fixed name, so rules can refer to it.
fn rename_link_towards(ns: &Namespace, address: Ipv4Addr, name: &str) -> Result<(), LabError> {
    let listing = ns.ip(&["-o", "-4", "addr", "show"])?;
    let text = String::from_utf8_lossy(&listing.stdout);
    let device = text
        .lines()
        .find(|l| l.contains(&format!("inet {address}/")))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
        .ok_or_else(|| LabError::Failed {
            command: format!("ip -n {} addr show", ns.name()),
            stderr: format!("no interface holds {address}"),
        })?;
    // A link is renamed only while down; its routes return when it comes up (but the
    // default route, which the caller adds afterwards).
    ns.ip(&["link", "set", &device, "down"])?;
    ns.ip(&["link", "set", &device, "name", name])?;
    ns.ip(&["link", "set", name, "up"])?;
    Ok(())
}

impl Router {
    /// Turns forwarding on and loads the rules of `kind`; the WAN side is `wan0`.
    fn configure(&self, kind: NatKind) -> Result<(), LabError> {
        self.namespace
            .sh("echo 1 > /proc/sys/net/ipv4/ip_forward")?;
        // Real home routers drop unsolicited traffic addressed to themselves; without this a
        // peer's early probe claims the port and masquerade moves the host's flow elsewhere.
        const DROP_UNSOLICITED: &str = "
table ip guard {
  chain input {
    type filter hook input priority 0; policy accept;
    iifname \"wan0\" ct state established,related accept
    iifname \"wan0\" drop
  }
}
";
        const MASQUERADE: &str = "
table ip nat {
  chain post {
    type nat hook postrouting priority 100; policy accept;
    oifname \"wan0\" masquerade
  }
}
";
        const MASQUERADE_RANDOM: &str = "
table ip nat {
  chain post {
    type nat hook postrouting priority 100; policy accept;
    oifname \"wan0\" masquerade random
  }
}
";
        // Full cone: remember which inside host used each port, and send inbound UDP for
        // that port to it, whoever sends it.
        const FULL_CONE: &str = "
table ip cone {
  map ports {
    type inet_service : ipv4_addr; flags dynamic,timeout; timeout 120s;
  }
  chain learn {
    type filter hook postrouting priority 0; policy accept;
    oifname \"wan0\" update @ports { udp sport : ip saddr }
  }
  chain pre {
    type nat hook prerouting priority -100; policy accept;
    iifname \"wan0\" udp dport @ports dnat ip to udp dport map @ports
  }
}
";
        const BLOCK_UDP: &str = "
table ip block {
  chain forward {
    type filter hook forward priority 0; policy accept;
    meta l4proto udp drop
  }
}
";
        let rules = match kind {
            NatKind::HomeRouter | NatKind::CarrierGrade => [MASQUERADE, DROP_UNSOLICITED].concat(),
            NatKind::BareMasquerade => MASQUERADE.to_string(),
            NatKind::Symmetric => [MASQUERADE_RANDOM, DROP_UNSOLICITED].concat(),
            NatKind::FullCone => [MASQUERADE, FULL_CONE, DROP_UNSOLICITED].concat(),
            NatKind::UdpBlocked => [MASQUERADE, BLOCK_UDP, DROP_UNSOLICITED].concat(),
        };
        self.namespace.nft(&rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, UdpSocket};
    use std::time::Duration;

    fn bind(host: &Host, port: u16) -> UdpSocket {
        let socket = host
            .namespace
            .bind_udp(SocketAddr::from((host.address, port)))
            .unwrap()
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        socket
    }

    fn receive(socket: &UdpSocket) -> Option<SocketAddr> {
        let mut buf = [0u8; 64];
        socket.recv_from(&mut buf).ok().map(|(_, from)| from)
    }

    /// Per kind: does the mapping stay the same towards two servers (endpoint-independent
    /// mapping), and does a third host that was never contacted get through (filtering)?
    #[test]
    fn every_nat_kind_maps_and_filters_as_its_name_says() {
        let mut net = Internet::new().unwrap();
        let servers: Vec<Host> = (1..=3)
            .map(|i| net.public_host(&format!("s{i}")).unwrap())
            .collect();
        let sockets: Vec<UdpSocket> = servers.iter().map(|s| bind(s, 5000)).collect();
        let expectations = [
            // kind, endpoint-independent mapping, unsolicited traffic admitted
            (NatKind::FullCone, true, true),
            (NatKind::HomeRouter, true, false),
            (NatKind::BareMasquerade, true, false),
            (NatKind::CarrierGrade, true, false),
            (NatKind::Symmetric, false, false),
        ];
        for (i, (kind, independent, admits_unsolicited)) in expectations.into_iter().enumerate() {
            let (host, router) = net.behind_nat(&format!("h{i}"), kind).unwrap();
            let socket = bind(&host, 40000);
            // A fresh namespace's first datagram can be lost while its neighbours are
            // resolved: probe again (from the same socket, so the same mapping) until one
            // arrives.
            let from_router = |got: &SocketAddr| got.ip() == std::net::IpAddr::V4(router.public);
            let reach = |server: usize| {
                (0..5).find_map(|_| {
                    let to = SocketAddr::from((servers[server].address, 5000));
                    socket.send_to(b"probe", to).unwrap();
                    // A late copy of an earlier site's probe is not this one.
                    std::iter::from_fn(|| receive(&sockets[server])).find(from_router)
                })
            };
            let first = reach(0)
                .unwrap_or_else(|| panic!("{kind:?}: nothing from {} reached s1", router.public));
            let second = reach(1)
                .unwrap_or_else(|| panic!("{kind:?}: nothing from {} reached s2", router.public));
            assert_eq!(
                first.ip(),
                std::net::IpAddr::V4(router.public),
                "{kind:?}: translated address"
            );
            assert_eq!(
                first == second,
                independent,
                "{kind:?}: mapping {first} vs {second}"
            );
            // A reply from a contacted server always gets back in.
            sockets[0].send_to(b"reply", first).unwrap();
            assert!(receive(&socket).is_some(), "{kind:?}: a reply was dropped");
            // An uncontacted host aims at the mapping.
            sockets[2].send_to(b"unsolicited", first).unwrap();
            assert_eq!(
                receive(&socket).is_some(),
                admits_unsolicited,
                "{kind:?}: unsolicited traffic"
            );
        }
        let (host, _) = net.behind_nat("blocked", NatKind::UdpBlocked).unwrap();
        let socket = bind(&host, 40000);
        socket
            .send_to(b"probe", SocketAddr::from((servers[0].address, 5000)))
            .unwrap();
        assert!(
            receive(&sockets[0]).is_none(),
            "UDP got out of a UDP-blocking site"
        );
    }
}
