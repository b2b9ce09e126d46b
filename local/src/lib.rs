//! What a node and the clients on its host share, and nothing of the network: the home
//! directory (`home`) and the local API's frames over a byte stream (`frames`; their
//! encoding is `tern_proto::api`). `tern-ctl` builds on this crate without QUIC or TLS.

pub mod frames;
pub mod home;
