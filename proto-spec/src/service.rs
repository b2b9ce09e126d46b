//! Service names (e.g. for `ternctl mcp expose NAME`) and the virtual port each maps to.
//!
//! A name that is a number is that port. Any other name must be 1–63 characters of `a-z`,
//! `0-9` and `-`, not starting or ending with `-`; it maps to a port in 32768–49151:
//! `32768 + (first two bytes of BLAKE3.derive_key("tern 2026-11 service port v1", name),
//! big-endian) mod 16384`. Both ends compute the same port; two names on one node collide
//! with probability 1/16384, which `listen` reports as the port being in use.

pub const NAMED_PORTS_START: u16 = 32768;
const NAMED_PORTS: u16 = 16384;
const CONTEXT: &str = "tern 2026-11 service port v1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a service name: use 1-63 characters of a-z, 0-9 and '-', not starting or \
     ending with '-' (or a port number)"
)]
pub struct ServiceNameError(pub String);

/// The port a service name or number stands for.
pub fn service_port(name: &str) -> Result<u16, ServiceNameError> {
    if let Ok(port) = name.parse::<u16>() {
        return Ok(port);
    }
    let valid = (1..=63).contains(&name.len())
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(ServiceNameError(name.chars().take(70).collect()));
    }
    let hash = blake3::derive_key(CONTEXT, name.as_bytes());
    Ok(NAMED_PORTS_START + u16::from_be_bytes([hash[0], hash[1]]) % NAMED_PORTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_stable_ports_in_their_range() {
        let port = service_port("time").unwrap();
        assert!((32768..49152).contains(&port));
        assert_eq!(service_port("time").unwrap(), port);
        assert_ne!(service_port("weather").unwrap(), port);
        assert_eq!(service_port("8080").unwrap(), 8080);
        for bad in ["", "-x", "x-", "Time", "a b", "ü", &"a".repeat(64)] {
            assert!(service_port(bad).is_err(), "{bad:?}");
        }
    }
}
