//! Sorting datagrams on tern's one UDP socket by their first byte (RFC 7983 / RFC 9443 style).
//!
//! | first byte | what                                                        |
//! |------------|-------------------------------------------------------------|
//! | 0x00–0x03  | STUN, when bytes 4..8 hold the magic cookie 0x2112A442       |
//! | 0x20–0x3f  | tern packets ([`TernType`])                                  |
//! | 0x40–0xff  | QUIC (the fixed bit 0x40 is set; QUIC bit greasing is off)   |
//! | otherwise  | unknown: dropped and counted                                 |

/// STUN's magic cookie (RFC 8489 §5).
pub const STUN_MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
const STUN_HEADER_LEN: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Stun,
    Tern(TernType),
    Quic,
    Unknown,
}

/// tern's own packet types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TernType {
    /// A sealed control packet between two nodes ([`crate::control`]).
    SealedControl = 0x20,
    /// A QUIC packet to be forwarded by a relay ([`RelayHeader`]).
    Relay = 0x21,
}

impl TernType {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x20 => Some(Self::SealedControl),
            0x21 => Some(Self::Relay),
            _ => None,
        }
    }
}

pub fn classify(datagram: &[u8]) -> PacketKind {
    match datagram.first() {
        None => PacketKind::Unknown,
        Some(&b) if b >= 0x40 => PacketKind::Quic,
        Some(&b)
            if b <= 0x03
                && datagram.len() >= STUN_HEADER_LEN
                && datagram[4..8] == STUN_MAGIC_COOKIE =>
        {
            PacketKind::Stun
        }
        Some(&b) => TernType::from_byte(b).map_or(PacketKind::Unknown, PacketKind::Tern),
    }
}

/// `0x21 | destination address | source address | payload (a QUIC packet)`: sent to a relay,
/// which forwards the same bytes to the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayHeader {
    pub destination: crate::Address,
    pub source: crate::Address,
}

impl RelayHeader {
    pub const LEN: usize = 13;

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = TernType::Relay as u8;
        out[1..7].copy_from_slice(&self.destination.to_bytes());
        out[7..13].copy_from_slice(&self.source.to_bytes());
        out
    }

    /// The header and the payload behind it.
    pub fn decode(frame: &[u8]) -> Option<(Self, &[u8])> {
        if frame.len() < Self::LEN || frame[0] != TernType::Relay as u8 {
            return None;
        }
        let address =
            |at: usize| crate::Address::from_bytes(frame[at..at + 6].try_into().expect("6 bytes"));
        Some((
            Self {
                destination: address(1),
                source: address(7),
            },
            &frame[Self::LEN..],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_each_range() {
        let mut stun = [0u8; 20];
        stun[1] = 0x01;
        stun[4..8].copy_from_slice(&STUN_MAGIC_COOKIE);
        assert_eq!(classify(&stun), PacketKind::Stun);
        assert_eq!(classify(&stun[..19]), PacketKind::Unknown);
        assert_eq!(
            classify(&[0x20, 1, 2]),
            PacketKind::Tern(TernType::SealedControl)
        );
        assert_eq!(classify(&[0x40]), PacketKind::Quic);
        assert_eq!(classify(&[0xc3, 0, 0, 0, 1]), PacketKind::Quic);
        assert_eq!(classify(&[0x3f]), PacketKind::Unknown);
        let header = RelayHeader {
            destination: crate::Address::from_bytes([1; 6]),
            source: crate::Address::from_bytes([2; 6]),
        };
        let mut frame = header.encode().to_vec();
        frame.extend_from_slice(b"quic");
        assert_eq!(classify(&frame), PacketKind::Tern(TernType::Relay));
        assert_eq!(RelayHeader::decode(&frame), Some((header, &b"quic"[..])));
        assert_eq!(RelayHeader::decode(&frame[..12]), None);
        assert_eq!(classify(&[]), PacketKind::Unknown);
    }

    proptest! {
        #[test]
        fn every_datagram_has_exactly_one_kind_and_quic_is_never_diverted(d in proptest::collection::vec(any::<u8>(), 0..64)) {
            let kind = classify(&d);
            if d.first().is_some_and(|b| *b >= 0x40) {
                prop_assert_eq!(kind, PacketKind::Quic);
            } else {
                prop_assert_ne!(kind, PacketKind::Quic);
            }
        }
    }
}
