//! quinn sees one stable, synthetic address per remote path; this table says where packets to
//! that address really go. Switching a route (direct ↔ relay, a NAT rebinding) is then one
//! table update, invisible to the QUIC connection.
//!
//! Synthetic addresses live in the ULA prefix fd74:6572:6e00::/48 ("tern"), which never leaves
//! this process. A datagram from an unknown source gets an *unpinned* synthetic address; once
//! a connection on it is verified it is pinned. Unpinned entries are capped, oldest evicted,
//! so a flood of spoofed sources cannot grow the table without bound. A path's synthetic
//! address is a keyed hash of the path, so a path evicted and seen again gets the same one:
//! a QUIC Retry token (bound to the address quinn sees) stays valid through a flood.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use tern_proto::Address;

/// Where packets for a synthetic address really go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// Straight to this UDP address.
    Direct(SocketAddr),
    /// Wrapped in relay frames to `relay`, which forwards them to `peer`.
    Relay { relay: SocketAddr, peer: Address },
}

impl Route {
    fn canonical(self) -> Self {
        match self {
            Self::Direct(a) => Self::Direct(canonical(a)),
            Self::Relay { relay, peer } => Self::Relay {
                relay: canonical(relay),
                peer,
            },
        }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(a) => write!(f, "{a}"),
            Self::Relay { relay, .. } => write!(f, "{relay} (relay)"),
        }
    }
}

const SYNTHETIC_PREFIX: [u16; 3] = [0xfd74, 0x6572, 0x6e00];
const SYNTHETIC_PORT: u16 = 7;
pub const MAX_UNPINNED: usize = 4096;
/// Earlier routes of a moved path that still map back to it (replies along the old path).
const MAX_ALIASES: usize = 4;
/// Ids from the hash have the top bit clear; the rare collision takes a counted id instead.
const COUNTED_ID: u64 = 1 << 63;

#[derive(Debug)]
struct Entry {
    route: Route,
    /// Routes that map back to this entry besides `route`: where it was before it moved.
    aliases: VecDeque<Route>,
    /// Verified connections using this path; at 0 the entry may be evicted.
    pins: u32,
}

#[derive(Debug, Default)]
pub struct PathTable {
    key: std::collections::hash_map::RandomState,
    next_id: u64,
    routes: HashMap<SocketAddr, Entry>,
    by_route: HashMap<Route, SocketAddr>,
    unpinned: VecDeque<SocketAddr>,
}

/// `::ffff:a.b.c.d` and `a.b.c.d` are one path.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

pub fn is_synthetic(addr: &SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(v6) if v6.ip().segments()[..3] == SYNTHETIC_PREFIX)
}

/// TCP links (for networks that block UDP) stand in for a UDP address with an address of
/// their own in fd74:6572:6e01::/48, so that routes, relaying and the node treat a link like
/// any other remote address.
const LINK_PREFIX: [u16; 3] = [0xfd74, 0x6572, 0x6e01];

pub fn link_address(id: u64) -> SocketAddr {
    in_prefix(LINK_PREFIX, id)
}

/// The address numbered `id` in a /48 of ours.
fn in_prefix([p0, p1, p2]: [u16; 3], id: u64) -> SocketAddr {
    let ip = Ipv6Addr::new(
        p0,
        p1,
        p2,
        0,
        (id >> 48) as u16,
        (id >> 32) as u16,
        (id >> 16) as u16,
        id as u16,
    );
    SocketAddr::V6(SocketAddrV6::new(ip, SYNTHETIC_PORT, 0, 0))
}

pub fn is_link(addr: &SocketAddr) -> bool {
    matches!(addr, SocketAddr::V6(v6) if v6.ip().segments()[..3] == LINK_PREFIX)
}

/// Whose budget a packet from `from` (a real address) counts against: its IPv4 address, or
/// its IPv6 /64, which one host may hold whole.
pub fn source_key(from: SocketAddr) -> std::net::IpAddr {
    match canonical(from).ip() {
        std::net::IpAddr::V6(ip) => {
            let [a, b, c, d, ..] = ip.segments();
            std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0).into()
        }
        ip => ip,
    }
}

impl PathTable {
    /// The synthetic address for packets from (or a dial along) `route`, made if new.
    pub fn synthetic_for(&mut self, route: Route) -> SocketAddr {
        let route = route.canonical();
        if let Some(synthetic) = self.by_route.get(&route) {
            return *synthetic;
        }
        let hashed = in_prefix(SYNTHETIC_PREFIX, self.key.hash_one(route) & !COUNTED_ID);
        let synthetic = match self.routes.contains_key(&hashed) {
            false => hashed,
            true => {
                self.next_id += 1;
                in_prefix(SYNTHETIC_PREFIX, COUNTED_ID | self.next_id)
            }
        };
        let entry = Entry {
            route,
            aliases: VecDeque::new(),
            pins: 0,
        };
        self.routes.insert(synthetic, entry);
        self.by_route.insert(route, synthetic);
        self.unpinned.push_back(synthetic);
        self.evict_unpinned();
        synthetic
    }

    /// Where packets for `synthetic` go now.
    pub fn route_for(&self, synthetic: &SocketAddr) -> Option<Route> {
        self.routes.get(synthetic).map(|r| r.route)
    }

    /// A verified connection uses this path: keep it until as many [`PathTable::unpin`]s.
    pub fn pin(&mut self, synthetic: SocketAddr) {
        if let Some(route) = self.routes.get_mut(&synthetic) {
            route.pins += 1;
        }
    }

    /// A connection on this path is gone; with none left the path may be evicted later.
    pub fn unpin(&mut self, synthetic: SocketAddr) {
        if let Some(route) = self.routes.get_mut(&synthetic) {
            route.pins = route.pins.saturating_sub(1);
            if route.pins == 0 {
                self.unpinned.push_back(synthetic);
                self.evict_unpinned();
            }
        }
    }

    fn remove(&mut self, synthetic: SocketAddr) {
        if let Some(entry) = self.routes.remove(&synthetic) {
            for route in entry.aliases.iter().chain([&entry.route]) {
                self.forget_route(*route, synthetic);
            }
        }
    }

    /// Stops `route` mapping to `synthetic` (if it still does).
    fn forget_route(&mut self, route: Route, synthetic: SocketAddr) {
        if self.by_route.get(&route) == Some(&synthetic) {
            self.by_route.remove(&route);
        }
    }

    /// Send `synthetic`'s packets along `route` from now on; packets arriving along `route`
    /// map back to it.
    pub fn set_route(&mut self, synthetic: SocketAddr, route: Route) {
        let route = route.canonical();
        let Some(entry) = self.routes.get_mut(&synthetic) else {
            return;
        };
        if entry.route == route {
            return;
        }
        let old = std::mem::replace(&mut entry.route, route);
        entry.aliases.retain(|r| *r != route);
        entry.aliases.push_back(old);
        let dropped = match entry.aliases.len() > MAX_ALIASES {
            true => entry.aliases.pop_front(),
            false => None,
        };
        if let Some(dropped) = dropped {
            self.forget_route(dropped, synthetic);
        }
        if let Some(previous) = self.by_route.insert(route, synthetic)
            && previous != synthetic
            && self.routes.get(&previous).is_some_and(|r| r.pins == 0)
        {
            self.remove(previous);
        }
    }

    /// Whether a verified connection uses the direct path to `real` (a peer of ours sends
    /// from there: it may relay to us).
    pub fn is_pinned_direct(&self, real: SocketAddr) -> bool {
        self.by_route
            .get(&Route::Direct(canonical(real)))
            .and_then(|synthetic| self.routes.get(synthetic))
            .is_some_and(|entry| entry.pins > 0)
    }

    /// How many routes map to a path (for tests of the table's size).
    pub fn routes_len(&self) -> usize {
        self.by_route.len()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every path enters the queue when it becomes unpinned, so at most MAX_UNPINNED paths
    /// are unpinned at once; entries pinned again meanwhile just fall out of it.
    fn evict_unpinned(&mut self) {
        while self.unpinned.len() > MAX_UNPINNED {
            if let Some(oldest) = self.unpinned.pop_front()
                && self.routes.get(&oldest).is_some_and(|r| r.pins == 0)
            {
                self.remove(oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(port: u16) -> Route {
        Route::Direct(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn one_synthetic_address_per_path_and_routes_can_move() {
        let mut t = PathTable::default();
        let s = t.synthetic_for(real(1));
        assert!(is_synthetic(&s));
        assert_eq!(t.synthetic_for(real(1)), s);
        assert_eq!(
            t.synthetic_for(Route::Direct("[::ffff:192.0.2.1]:1".parse().unwrap())),
            s,
            "v4-mapped is the same path"
        );
        let relayed = Route::Relay {
            relay: "192.0.2.1:1".parse().unwrap(),
            peer: Address::from_bytes([7; 6]),
        };
        assert_ne!(
            t.synthetic_for(relayed),
            s,
            "a relay path through the same address is another path"
        );
        assert_ne!(t.synthetic_for(real(2)), s);
        t.pin(s);
        t.set_route(s, real(3));
        assert_eq!(t.route_for(&s), Some(real(3)));
        assert_eq!(t.synthetic_for(real(3)), s);
        t.unpin(s);
        assert_eq!(
            t.route_for(&s),
            Some(real(3)),
            "unpinned paths stay until evicted"
        );
    }

    #[test]
    fn a_flood_of_sources_evicts_unpinned_paths_only() {
        let mut t = PathTable::default();
        let kept = t.synthetic_for(real(1));
        t.pin(kept);
        for port in 2..(MAX_UNPINNED as u16 * 3) {
            t.synthetic_for(real(port));
        }
        assert!(t.len() <= MAX_UNPINNED + 1);
        assert_eq!(t.route_for(&kept), Some(real(1)));
    }

    #[test]
    fn an_evicted_path_seen_again_gets_its_old_synthetic_address() {
        let mut t = PathTable::default();
        let first = t.synthetic_for(real(1));
        for port in 2..(MAX_UNPINNED as u16 * 2) {
            t.synthetic_for(real(port));
        }
        assert!(t.route_for(&first).is_none(), "evicted by the flood");
        assert_eq!(t.synthetic_for(real(1)), first);
    }

    #[test]
    fn moved_and_closed_paths_leave_nothing_behind() {
        let mut t = PathTable::default();
        for cycle in 0..100u16 {
            let s = t.synthetic_for(real(10_000 + cycle));
            t.pin(s);
            for hop in 1..8u16 {
                t.set_route(s, real(20_000 + cycle * 8 + hop));
            }
            assert!(t.is_pinned_direct(SocketAddr::from(([192, 0, 2, 1], 20_000 + cycle * 8 + 7))));
            assert!(t.routes_len() <= (1 + MAX_ALIASES) * t.len());
            t.unpin(s);
        }
        // Unpinned leftovers only, each with its bounded aliases; evicting them empties all.
        assert!(t.len() <= 100);
        while let Some(oldest) = t.unpinned.pop_front() {
            t.remove(oldest);
        }
        assert_eq!((t.len(), t.routes_len()), (0, 0));
    }
}
