//! Sealed control packets: authenticated, encrypted, replay-protected datagrams between two
//! nodes that know each other's identity, used to validate paths and punch holes.
//!
//! ```text
//! 0       type 0x20
//! 1..7    sender address
//! 7..13   receiver address
//! 13..21  counter (u64)
//! 21..    ChaCha20-Poly1305(key[sender→receiver], nonce = 0^4 || counter, aad = bytes 0..21,
//!                           plaintext = message)
//! key[s→r] = BLAKE3.derive_key("tern 2026-11 control key v1", X25519(s, r) || Ks || Kr)
//! ```
//! X25519 uses the Ed25519 keys in their Montgomery form, so no extra key exchange is needed;
//! these packets carry no secrets (QUIC does), they only prove who sent them and when.

use crate::address::Address;
use crate::identity::{PublicIdentity, SecretIdentity};
use crate::packet::TernType;
use crate::wire::{DecodeError, Reader, put_socket_addr, read_socket_addr};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use std::net::SocketAddr;

const KEY_CONTEXT: &str = "tern 2026-11 control key v1";
pub const HEADER_LEN: usize = 21;
const TAG_LEN: usize = 16;
/// A ping is padded to the size of the largest pong so that no answer outgrows its request.
const PING_PLAINTEXT_LEN: usize = 1 + 8 + 19;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// "Are you there on this path?" `txid` matches the answer to the question.
    Ping { txid: u64 },
    /// The answer, with the UDP address the ping came from as the receiver saw it.
    Pong { txid: u64, observed: SocketAddr },
}

impl ControlMessage {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(PING_PLAINTEXT_LEN);
        match self {
            Self::Ping { txid } => {
                out.push(0x01);
                out.extend_from_slice(&txid.to_be_bytes());
                out.resize(PING_PLAINTEXT_LEN, 0);
            }
            Self::Pong { txid, observed } => {
                out.push(0x02);
                out.extend_from_slice(&txid.to_be_bytes());
                put_socket_addr(&mut out, *observed);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        match r.u8("message type")? {
            0x01 => {
                let txid = r.u64("ping txid")?;
                r.rest(); // padding
                Ok(Self::Ping { txid })
            }
            0x02 => {
                let txid = r.u64("pong txid")?;
                let observed = read_socket_addr(&mut r)?;
                r.finish("pong")?;
                Ok(Self::Pong { txid, observed })
            }
            other => Err(DecodeError::unknown("control message type", other)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("malformed control packet: {0}")]
    Malformed(#[from] DecodeError),
    #[error("control packet addressed to {to}, not to this node")]
    WrongReceiver { to: Address },
    #[error("control packet failed authentication (wrong key, or altered in transit)")]
    Unauthentic,
    #[error("control packet counter {0} was already seen or is too old (replay)")]
    Replay(u64),
}

/// Who a sealed packet claims to be from and to; read before choosing keys.
pub fn peek_addresses(packet: &[u8]) -> Result<(Address, Address), DecodeError> {
    let mut r = Reader::new(packet);
    if r.u8("packet type")? != TernType::SealedControl as u8 {
        return Err(DecodeError::Invalid {
            what: "packet type",
            detail: "not a sealed control packet".into(),
        });
    }
    let from = Address::from_bytes(r.array("sender address")?);
    let to = Address::from_bytes(r.array("receiver address")?);
    Ok((from, to))
}

/// Both directions' keys between this node and one peer.
pub struct ControlKeys {
    me: Address,
    peer: Address,
    seal: ChaCha20Poly1305,
    open: ChaCha20Poly1305,
}

impl ControlKeys {
    pub fn new(me: &SecretIdentity, peer: &PublicIdentity) -> Self {
        let secret = x25519_dalek::StaticSecret::from(me.signing_key().to_scalar_bytes());
        let their = x25519_dalek::PublicKey::from(peer.key().to_montgomery().to_bytes());
        let shared = secret.diffie_hellman(&their);
        let my_key = me.public().key_bytes();
        let their_key = peer.key_bytes();
        let derive = |from: &[u8; 32], to: &[u8; 32]| {
            let mut h = blake3::Hasher::new_derive_key(KEY_CONTEXT);
            h.update(shared.as_bytes());
            h.update(from);
            h.update(to);
            ChaCha20Poly1305::new(h.finalize().as_bytes().into())
        };
        Self {
            me: me.address(),
            peer: peer.address(),
            seal: derive(&my_key, &their_key),
            open: derive(&their_key, &my_key),
        }
    }

    pub fn peer(&self) -> Address {
        self.peer
    }

    fn nonce(counter: u64) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        Nonce::from(n)
    }

    /// A packet to the peer. `counter` must never repeat for this key (see [`Counter`]).
    pub fn seal(&self, counter: u64, message: &ControlMessage) -> Vec<u8> {
        let mut packet = Vec::with_capacity(HEADER_LEN + PING_PLAINTEXT_LEN + TAG_LEN);
        packet.push(TernType::SealedControl as u8);
        packet.extend_from_slice(&self.me.to_bytes());
        packet.extend_from_slice(&self.peer.to_bytes());
        packet.extend_from_slice(&counter.to_be_bytes());
        let sealed = self
            .seal
            .encrypt(
                &Self::nonce(counter),
                Payload {
                    msg: &message.encode(),
                    aad: &packet,
                },
            )
            .expect("ChaCha20-Poly1305 encryption of a small buffer cannot fail");
        packet.extend_from_slice(&sealed);
        packet
    }

    /// Authenticates and decrypts a packet from the peer; `window` refuses replays and is only
    /// updated by authentic packets.
    pub fn open(
        &self,
        packet: &[u8],
        window: &mut ReplayWindow,
    ) -> Result<ControlMessage, ControlError> {
        window.admit(self.authenticate(packet)?)
    }

    /// The first half of [`ControlKeys::open`], needing no window: a node decrypts without
    /// holding the lock its windows live under, then admits the result.
    pub fn authenticate(&self, packet: &[u8]) -> Result<Authentic, ControlError> {
        let (from, to) = peek_addresses(packet)?;
        if to != self.me {
            return Err(ControlError::WrongReceiver { to });
        }
        if from != self.peer {
            return Err(ControlError::Unauthentic);
        }
        let mut r = Reader::new(&packet[13..]);
        let counter = r.u64("counter")?;
        let plain = self
            .open
            .decrypt(
                &Self::nonce(counter),
                Payload {
                    msg: r.rest(),
                    aad: &packet[..HEADER_LEN],
                },
            )
            .map_err(|_| ControlError::Unauthentic)?;
        Ok(Authentic { counter, plain })
    }
}

/// A packet that passed authentication, not yet checked against replays: its message is only
/// reachable through [`ReplayWindow::admit`].
#[derive(Debug)]
pub struct Authentic {
    counter: u64,
    plain: Vec<u8>,
}

/// Sliding window over the last 128 counters seen from one peer (RFC 6479 style).
#[derive(Debug, Default, Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    seen: u128,
}

impl ReplayWindow {
    pub fn is_fresh(&self, counter: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if counter > h => true,
            Some(h) => h - counter < 128 && self.seen & (1u128 << (h - counter)) == 0,
        }
    }

    /// Takes an authentic packet's counter if it was not seen before, and gives its message.
    pub fn admit(&mut self, packet: Authentic) -> Result<ControlMessage, ControlError> {
        if !self.is_fresh(packet.counter) {
            return Err(ControlError::Replay(packet.counter));
        }
        self.mark(packet.counter);
        Ok(ControlMessage::decode(&packet.plain)?)
    }

    fn mark(&mut self, counter: u64) {
        match self.highest {
            Some(h) if counter <= h => self.seen |= 1u128 << (h - counter),
            Some(h) => {
                let shift = counter - h;
                self.seen = if shift >= 128 { 0 } else { self.seen << shift } | 1;
                self.highest = Some(counter);
            }
            None => {
                self.seen = 1;
                self.highest = Some(counter);
            }
        }
    }
}

/// Sending counters: strictly increasing, and starting from the wall clock in microseconds so
/// that a restarted node is not taken for a replayer by peers that remember its old counters.
/// A node whose clock may step back also raises it to a floor it kept (see ternd's home).
#[derive(Debug, Clone)]
pub struct Counter(u64);

impl Counter {
    pub fn starting_at_unix_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// Never below `floor` from now on.
    pub fn raise_to(&mut self, floor: u64) {
        self.0 = self.0.max(floor);
    }

    pub fn advance(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Three identities, made once: each costs a nonce search.
    fn ids() -> &'static [SecretIdentity; 3] {
        static IDS: std::sync::OnceLock<[SecretIdentity; 3]> = std::sync::OnceLock::new();
        IDS.get_or_init(|| std::array::from_fn(|i| SecretIdentity::from_seed([i as u8 + 1; 32])))
    }

    fn pair() -> (ControlKeys, ControlKeys) {
        let [a, b, _] = ids();
        (
            ControlKeys::new(a, b.public()),
            ControlKeys::new(b, a.public()),
        )
    }

    #[test]
    fn seal_then_open_and_pong_never_outgrows_ping() {
        let (a, b) = pair();
        let mut window = ReplayWindow::default();
        let ping = a.seal(7, &ControlMessage::Ping { txid: 99 });
        assert_eq!(
            b.open(&ping, &mut window).unwrap(),
            ControlMessage::Ping { txid: 99 }
        );
        let observed: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        let pong = b.seal(8, &ControlMessage::Pong { txid: 99, observed });
        assert!(pong.len() <= ping.len());
        let mut back = ReplayWindow::default();
        assert_eq!(
            a.open(&pong, &mut back).unwrap(),
            ControlMessage::Pong { txid: 99, observed }
        );
    }

    #[test]
    fn replays_tampering_and_misdirection_are_refused() {
        let (a, b) = pair();
        let mut window = ReplayWindow::default();
        let ping = a.seal(5, &ControlMessage::Ping { txid: 1 });
        b.open(&ping, &mut window).unwrap();
        assert!(matches!(
            b.open(&ping, &mut window),
            Err(ControlError::Replay(5))
        ));
        let mut altered = a.seal(6, &ControlMessage::Ping { txid: 1 });
        *altered.last_mut().unwrap() ^= 1;
        assert!(matches!(
            b.open(&altered, &mut window),
            Err(ControlError::Unauthentic)
        ));
        // The altered packet must not have burned counter 6.
        b.open(&a.seal(6, &ControlMessage::Ping { txid: 1 }), &mut window)
            .unwrap();
        // A packet for a third node.
        let to_c = ControlKeys::new(&ids()[0], ids()[2].public());
        let misdirected = to_c.seal(9, &ControlMessage::Ping { txid: 1 });
        assert!(matches!(
            b.open(&misdirected, &mut window),
            Err(ControlError::WrongReceiver { .. })
        ));
        // Our own packet reflected back at us.
        assert!(a.open(&ping, &mut ReplayWindow::default()).is_err());
    }

    #[test]
    fn the_window_accepts_late_packets_once_and_forgets_ancient_ones() {
        let mut w = ReplayWindow::default();
        for c in [100, 90, 101, 99] {
            assert!(w.is_fresh(c));
            w.mark(c);
        }
        assert!(!w.is_fresh(90) && !w.is_fresh(101));
        assert!(w.is_fresh(95));
        w.mark(400);
        assert!(!w.is_fresh(272) && w.is_fresh(273));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let b = ControlKeys::new(&ids()[1], ids()[0].public());
            let _ = b.open(&bytes, &mut ReplayWindow::default());
            let _ = peek_addresses(&bytes);
            let _ = ControlMessage::decode(&bytes);
        }
    }
}
