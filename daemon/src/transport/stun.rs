//! STUN Binding (RFC 8489) on the node's shared socket, via stun-rs: the request a node sends
//! to learn its reflexive address, and the answer it gives when it serves as a rendezvous.

use std::net::SocketAddr;
use stun_rs::attributes::stun::{Software, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder};

pub type TransactionId = [u8; 12];

/// Our requests carry a SOFTWARE attribute long enough that the answer (XOR-MAPPED-ADDRESS for
/// IPv6 included) is never larger than the request: a spoofed request cannot be amplified.
const REQUEST_SOFTWARE: &str = "tern binding request, padded to outweigh its answer";

fn encode(message: &stun_rs::StunMessage) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, message)
        .expect("a Binding message with two small attributes fits 512 bytes");
    buf.truncate(n);
    buf
}

/// A Binding request with transaction id `id` (12 random bytes).
pub fn binding_request(id: TransactionId) -> (TransactionId, Vec<u8>) {
    let software = Software::new(REQUEST_SOFTWARE).expect("a short SOFTWARE value");
    let message = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(stun_rs::TransactionId::from(id))
        .with_attribute(software)
        .build();
    (id, encode(&message))
}

/// The mapped address in a Binding success response, with its transaction id.
pub fn parse_binding_response(datagram: &[u8]) -> Option<(TransactionId, SocketAddr)> {
    let (message, _) = MessageDecoderBuilder::default()
        .build()
        .decode(datagram)
        .ok()?;
    if message.method() != BINDING || message.class() != MessageClass::SuccessResponse {
        return None;
    }
    let mapped = message
        .get::<XorMappedAddress>()?
        .as_xor_mapped_address()
        .ok()?;
    let id = message.transaction_id().as_ref().try_into().ok()?;
    Some((id, *mapped.socket_address()))
}

/// The answer to a Binding request from `from`, unless it is not one or would be larger than
/// the request.
pub fn answer_binding_request(datagram: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
    let (request, _) = MessageDecoderBuilder::default()
        .build()
        .decode(datagram)
        .ok()?;
    if request.method() != BINDING || request.class() != MessageClass::Request {
        return None;
    }
    let response = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
        .with_transaction_id(*request.transaction_id())
        .with_attribute(XorMappedAddress::from(from))
        .build();
    let bytes = encode(&response);
    (bytes.len() <= datagram.len()).then_some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_answer_round_trip_without_amplification() {
        let (id, request) = binding_request([7; 12]);
        for from in ["192.0.2.7:4242", "[2001:db8::7]:4242"] {
            let from: SocketAddr = from.parse().unwrap();
            let answer = answer_binding_request(&request, from).expect("answered");
            assert!(answer.len() <= request.len());
            assert_eq!(parse_binding_response(&answer), Some((id, from)));
        }
    }

    #[test]
    fn bare_requests_and_garbage_get_no_answer() {
        let bare = encode(&StunMessageBuilder::new(BINDING, MessageClass::Request).build());
        assert_eq!(
            answer_binding_request(&bare, "192.0.2.7:1".parse().unwrap()),
            None
        );
        assert_eq!(
            answer_binding_request(b"\x00\x01garbage", "192.0.2.7:1".parse().unwrap()),
            None
        );
        assert_eq!(parse_binding_response(b"\x01\x01\x00"), None);
    }
}
