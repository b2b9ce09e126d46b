//! What a daemon offers on top of its node, each on the node and the rendezvous client, none
//! on the daemon: names and aliases, the trust list, trust requests, applications' ports and
//! the echo service.

pub mod apps;
pub mod echo;
pub mod names;
pub mod trust;
pub mod trust_requests;
