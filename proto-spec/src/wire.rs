//! Small encodings shared by several formats.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Bytes ran out, or a field held a value the format does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated: {what} needs {needed} more byte(s)")]
    Truncated { what: &'static str, needed: usize },
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("{extra} unexpected trailing byte(s) after {what}")]
    TrailingBytes { what: &'static str, extra: usize },
}

impl DecodeError {
    /// A type byte that names no message of the format.
    pub fn unknown(what: &'static str, byte: u8) -> Self {
        Self::Invalid {
            what,
            detail: format!("{byte:#04x}"),
        }
    }
}

/// Longest refusal reason sent, in characters (a reason explains; it does not carry data).
pub const MAX_REASON_CHARS: usize = 200;

/// A refusal reason on the wire: length u16, then UTF-8, cut to [`MAX_REASON_CHARS`].
pub fn put_reason(out: &mut Vec<u8>, reason: &str) {
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
}

/// Reads a [`put_reason`] reason; bytes that are not UTF-8 are replaced, not refused.
pub fn read_reason(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let len = r.u16("reason length")? as usize;
    Ok(String::from_utf8_lossy(r.take(len, "reason")?).into_owned())
}

/// A cursor over received bytes; every read checks the length first.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n - self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returned N bytes"))
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A version byte, which must be `expected`.
    pub fn version(&mut self, what: &'static str, expected: u8) -> Result<(), DecodeError> {
        match self.u8(what)? {
            version if version == expected => Ok(()),
            version => Err(DecodeError::Invalid {
                what,
                detail: format!("{version} (expected {expected})"),
            }),
        }
    }

    pub fn rest_len(&self) -> usize {
        self.bytes.len()
    }

    /// The bytes not read yet, without consuming them.
    pub fn peek_rest(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(DecodeError::TrailingBytes { what, extra }),
        }
    }
}

/// For a message of `bytes` that ends in an Ed25519 signature, once `r` has read up to it:
/// the body the signature covers, and the signature. Nothing may follow it.
pub fn read_signature<'a>(
    bytes: &'a [u8],
    mut r: Reader<'a>,
    what: &'static str,
) -> Result<(&'a [u8], [u8; 64]), DecodeError> {
    let body_len = bytes.len() - r.rest_len();
    let signature = r.array("signature")?;
    r.finish(what)?;
    Ok((&bytes[..body_len], signature))
}

/// Socket address: family (4 or 6), the IP (4 or 16 bytes), port (u16). 7 or 19 bytes.
pub fn put_socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

pub fn read_socket_addr(r: &mut Reader<'_>) -> Result<SocketAddr, DecodeError> {
    let ip = match r.u8("address family")? {
        4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("IPv4 address")?)),
        6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("IPv6 address")?)),
        other => {
            return Err(DecodeError::Invalid {
                what: "address family",
                detail: format!("{other} (expected 4 or 6)"),
            });
        }
    };
    Ok(SocketAddr::new(ip, r.u16("port")?))
}
