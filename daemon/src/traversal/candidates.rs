//! Which of a peer's advertised endpoints are worth probing: never further in than the
//! rendezvous that handed the record over sits.

use std::net::{IpAddr, SocketAddr};

use crate::transport::paths::{canonical, is_link};

/// How far an address reaches: this host, a private network, or the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reach {
    Host,
    Private,
    Internet,
}

/// `None` for addresses that are never a peer's endpoint: unspecified, broadcast, multicast,
/// link-local (a record cannot carry the scope), port 0.
fn reach(endpoint: SocketAddr) -> Option<Reach> {
    let endpoint = canonical(endpoint);
    if endpoint.port() == 0 {
        return None;
    }
    match endpoint.ip() {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            if ip.is_unspecified()
                || ip.is_broadcast()
                || ip.is_multicast()
                || ip.is_link_local()
                || a == 0
            {
                None
            } else if ip.is_loopback() {
                Some(Reach::Host)
            } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
                Some(Reach::Private)
            } else {
                Some(Reach::Internet)
            }
        }
        IpAddr::V6(ip) => {
            if ip.is_unspecified() || ip.is_multicast() || ip.is_unicast_link_local() {
                None
            } else if ip.is_loopback() {
                Some(Reach::Host)
            } else if ip.is_unique_local() {
                Some(Reach::Private)
            } else {
                Some(Reach::Internet)
            }
        }
    }
}

/// Who wants the punch: this node (its operator dialled) or the peer (an introduction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    Us,
    Peer,
}

/// The endpoints of a peer's record worth probing, when the record came through the
/// rendezvous this node reaches at `rendezvous`. Endpoints are whatever the record's owner
/// wrote, so they never lead this node's probes further in than that rendezvous sits: a
/// record from a rendezvous on the internet never makes this node probe its own host, and
/// when the peer asked, not its private network either. (Two nodes behind one NAT still meet
/// on their LAN: the dialer probes the peer's private endpoints, and the peer answers probes
/// from wherever they come.)
pub fn probe_candidates(
    endpoints: &[SocketAddr],
    rendezvous: SocketAddr,
    asker: Asker,
) -> Vec<SocketAddr> {
    // A TCP link's synthetic address says nothing of where the rendezvous is: assume afar.
    let rendezvous_reach = match is_link(&rendezvous) {
        true => Reach::Internet,
        false => reach(rendezvous).unwrap_or(Reach::Internet),
    };
    let innermost = match asker {
        Asker::Us => rendezvous_reach.min(Reach::Private),
        Asker::Peer => rendezvous_reach,
    };
    let mut candidates: Vec<SocketAddr> = endpoints
        .iter()
        .map(|&e| canonical(e))
        .filter(|&e| reach(e).is_some_and(|r| r >= innermost))
        .collect();
    candidates.dedup();
    candidates.truncate(tern_proto::record::MAX_ENDPOINTS);
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_never_lead_probes_further_in_than_their_rendezvous_sits() {
        let endpoints: Vec<SocketAddr> = [
            "127.0.0.1:7440",
            "192.168.1.5:7440",
            "100.70.0.1:7440",
            "169.254.1.1:7440",
            "0.0.0.0:7440",
            "255.255.255.255:7440",
            "224.0.0.1:7440",
            "[fe80::1]:7440",
            "[::ffff:198.51.100.7]:7440",
            "203.0.113.9:0",
            "203.0.113.9:7440",
        ]
        .iter()
        .map(|e| e.parse().unwrap())
        .collect();
        let addrs = |list: &[&str]| -> Vec<SocketAddr> {
            list.iter().map(|e| e.parse().unwrap()).collect()
        };
        let public = "198.51.100.1:7440".parse().unwrap();
        assert_eq!(
            probe_candidates(&endpoints, public, Asker::Peer),
            addrs(&["198.51.100.7:7440", "203.0.113.9:7440"])
        );
        assert_eq!(
            probe_candidates(&endpoints, public, Asker::Us),
            addrs(&[
                "192.168.1.5:7440",
                "100.70.0.1:7440",
                "198.51.100.7:7440",
                "203.0.113.9:7440"
            ])
        );
        let lan = "10.0.0.1:7440".parse().unwrap();
        assert_eq!(
            probe_candidates(&endpoints, lan, Asker::Peer),
            probe_candidates(&endpoints, public, Asker::Us)
        );
        // Every node on one host (a test, a lab): loopback is fair.
        let host = "127.0.0.1:7440".parse().unwrap();
        assert_eq!(probe_candidates(&endpoints, host, Asker::Peer).len(), 5);
    }
}
