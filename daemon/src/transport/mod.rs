//! The secure transport: one UDP socket ([`socket`]) shared by QUIC, STUN and tern's sealed
//! control packets; QUIC connections authenticated by raw Ed25519 keys ([`handshake`]); a
//! path table ([`paths`]) that lets a connection change its real path without noticing.

pub mod cid;
pub mod handshake;
pub mod paths;
pub mod socket;
pub mod stun;
