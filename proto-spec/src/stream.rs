//! What rides inside QUIC: the preamble that opens each overlay stream, the acceptor's one-byte
//! answer, and the header of an overlay datagram.
//!
//! ```text
//! stream preamble (opener → acceptor): version 0x01 | destination port u16 | source port u16
//! stream answer   (acceptor → opener): status u8 (StreamStatus); after a refusal the stream ends
//! datagram (QUIC DATAGRAM frame):      destination port u16 | source port u16 | payload
//! identity hello (first uni stream):   version 0x01 | work nonce u64
//! ```
//! The TLS raw public key proves the key but carries no work nonce; each side therefore sends
//! its nonce on the first unidirectional stream right after the handshake (the server as
//! 0.5-RTT data), and the other side derives and checks the address before using the
//! connection.
//! The opener may send data right behind the preamble without waiting for the answer, so the
//! first byte never waits a round trip; it reads the answer before any reply data.

use crate::wire::{DecodeError, Reader};

/// The ALPN protocol id of tern's QUIC connections.
pub const ALPN: &[u8] = b"tern/1";
pub const PREAMBLE_VERSION: u8 = 0x01;
pub const PREAMBLE_LEN: usize = 5;
pub const DATAGRAM_HEADER_LEN: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub destination_port: u16,
    pub source_port: u16,
}

impl Preamble {
    pub fn encode(&self) -> [u8; PREAMBLE_LEN] {
        let d = self.destination_port.to_be_bytes();
        let s = self.source_port.to_be_bytes();
        [PREAMBLE_VERSION, d[0], d[1], s[0], s[1]]
    }

    pub fn decode(bytes: &[u8; PREAMBLE_LEN]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("preamble version")?;
        if version != PREAMBLE_VERSION {
            return Err(DecodeError::Invalid {
                what: "preamble version",
                detail: format!("{version} (this build speaks {PREAMBLE_VERSION})"),
            });
        }
        Ok(Self {
            destination_port: r.u16("destination port")?,
            source_port: r.u16("source port")?,
        })
    }
}

/// The acceptor's answer to a stream preamble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum StreamStatus {
    Accepted = 0x00,
    /// The acceptor's trust policy does not let this peer reach the port.
    NotTrusted = 0x01,
    /// Nothing listens on the destination port.
    NoListener = 0x02,
    /// The listener has too many streams waiting to be accepted.
    Busy = 0x03,
    /// The preamble was malformed or of an unknown version.
    BadPreamble = 0x04,
}

impl StreamStatus {
    pub fn from_byte(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            0x00 => Self::Accepted,
            0x01 => Self::NotTrusted,
            0x02 => Self::NoListener,
            0x03 => Self::Busy,
            0x04 => Self::BadPreamble,
            other => return Err(DecodeError::unknown("stream status", other)),
        })
    }
}

pub const HELLO_VERSION: u8 = 0x01;
pub const HELLO_LEN: usize = 9;

pub fn encode_hello(nonce: u64) -> [u8; HELLO_LEN] {
    let mut out = [0u8; HELLO_LEN];
    out[0] = HELLO_VERSION;
    out[1..].copy_from_slice(&nonce.to_be_bytes());
    out
}

/// The work nonce from an identity hello.
pub fn decode_hello(bytes: &[u8]) -> Result<u64, DecodeError> {
    let mut r = Reader::new(bytes);
    let version = r.u8("hello version")?;
    if version != HELLO_VERSION {
        return Err(DecodeError::Invalid {
            what: "hello version",
            detail: format!("{version} (this build speaks {HELLO_VERSION})"),
        });
    }
    let nonce = r.u64("work nonce")?;
    r.finish("identity hello")?;
    Ok(nonce)
}

/// Splits an overlay datagram into (destination port, source port, payload).
pub fn decode_datagram(bytes: &[u8]) -> Result<(u16, u16, &[u8]), DecodeError> {
    let mut r = Reader::new(bytes);
    let destination = r.u16("datagram destination port")?;
    let source = r.u16("datagram source port")?;
    Ok((destination, source, r.rest()))
}

pub fn encode_datagram_header(destination_port: u16, source_port: u16) -> [u8; 4] {
    let d = destination_port.to_be_bytes();
    let s = source_port.to_be_bytes();
    [d[0], d[1], s[0], s[1]]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn preamble_round_trip_and_version_check() {
        let p = Preamble {
            destination_port: 7,
            source_port: 49152,
        };
        assert_eq!(p.encode(), [1, 0, 7, 0xc0, 0]);
        assert_eq!(Preamble::decode(&p.encode()), Ok(p));
        assert!(Preamble::decode(&[2, 0, 7, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..8)) {
            let _ = decode_datagram(&bytes);
            let _ = decode_hello(&bytes);
            if let Ok(arr) = <[u8; PREAMBLE_LEN]>::try_from(bytes.as_slice()) {
                let _ = Preamble::decode(&arr);
            }
            if let Some(b) = bytes.first() {
                let _ = StreamStatus::from_byte(*b);
            }
        }
    }
}
