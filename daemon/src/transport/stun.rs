//! STUN Binding (RFC 8489) on the node's shared socket, via stun-rs: the request a node sends
//! to learn its reflexive address, and the answer it gives when it serves as a rendezvous.
//! Two pieces of NAT behaviour discovery (RFC 5780) ride along, for telling what kind of NAT
//! a node sits behind: answers carry OTHER-ADDRESS (the node's second, answer-only socket),
//! and a request with CHANGE-REQUEST "change port" is answered from that second socket.

use std::net::SocketAddr;
use stun_rs::attributes::discovery::{ChangeRequest, ChangeRequestFlags, OtherAddress};
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

/// A Binding request with transaction id `id` (12 random bytes); with `change_port`, asking
/// for the answer to come from the server's other port.
pub fn binding_request(id: TransactionId, change_port: bool) -> (TransactionId, Vec<u8>) {
    let software = Software::new(REQUEST_SOFTWARE).expect("a short SOFTWARE value");
    let mut message = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(stun_rs::TransactionId::from(id))
        .with_attribute(software);
    if change_port {
        message = message.with_attribute(ChangeRequest::new(Some(
            ChangeRequestFlags::ChangePort.into(),
        )));
    }
    (id, encode(&message.build()))
}

/// What a Binding success response says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingResponse {
    pub id: TransactionId,
    pub mapped: SocketAddr,
    /// The server's other socket, if it has one (its address as the server knows it: only
    /// the port is meaningful to a client behind a NAT, or when the server listens on any).
    pub other: Option<SocketAddr>,
}

/// The mapped address in a Binding success response, with its transaction id.
pub fn parse_binding_response(datagram: &[u8]) -> Option<BindingResponse> {
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
    let other = message
        .get::<OtherAddress>()
        .and_then(|a| a.as_other_address().ok())
        .map(|a| *a.socket_address());
    Some(BindingResponse {
        id: message.transaction_id().as_ref().try_into().ok()?,
        mapped: *mapped.socket_address(),
        other,
    })
}

/// An answer to a Binding request, and which socket it goes out of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingAnswer {
    pub bytes: Vec<u8>,
    /// The request asked for a change of port: the answer leaves from the other socket.
    pub from_other: bool,
}

/// The answer to a Binding request from `from`, unless it is not one or would be larger than
/// the request. `other` is this node's other socket, named in the answer; without one, a
/// request to change port gets no answer (as RFC 5780 wants of a server that cannot).
pub fn answer_binding_request(
    datagram: &[u8],
    from: SocketAddr,
    other: Option<SocketAddr>,
) -> Option<BindingAnswer> {
    let (request, _) = MessageDecoderBuilder::default()
        .build()
        .decode(datagram)
        .ok()?;
    if request.method() != BINDING || request.class() != MessageClass::Request {
        return None;
    }
    let from_other = request
        .get::<ChangeRequest>()
        .and_then(|c| c.as_change_request().ok())
        .is_some_and(|c| c.flags().contains(ChangeRequestFlags::ChangePort));
    if from_other && other.is_none() {
        return None;
    }
    let answer = |other: Option<SocketAddr>| {
        let mut response = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(*request.transaction_id())
            .with_attribute(XorMappedAddress::from(from));
        if let Some(other) = other {
            response = response.with_attribute(OtherAddress::from(other));
        }
        encode(&response.build())
    };
    // Never larger than the request: without OTHER-ADDRESS if that is what it takes.
    let bytes = Some(answer(other))
        .filter(|b| b.len() <= datagram.len())
        .or_else(|| Some(answer(None)).filter(|b| b.len() <= datagram.len()))?;
    Some(BindingAnswer { bytes, from_other })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_answer_round_trip_without_amplification() {
        let (id, request) = binding_request([7; 12], false);
        let other: SocketAddr = "[2001:db8::1]:5555".parse().unwrap();
        for from in ["192.0.2.7:4242", "[2001:db8::7]:4242"] {
            let from: SocketAddr = from.parse().unwrap();
            let answer = answer_binding_request(&request, from, Some(other)).expect("answered");
            assert!(answer.bytes.len() <= request.len());
            assert!(!answer.from_other);
            let response = parse_binding_response(&answer.bytes).unwrap();
            assert_eq!((response.id, response.mapped), (id, from));
            assert_eq!(response.other, Some(other));
        }
    }

    #[test]
    fn a_change_of_port_is_answered_from_the_other_socket_or_not_at_all() {
        let (id, request) = binding_request([9; 12], true);
        let from: SocketAddr = "192.0.2.7:4242".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:5555".parse().unwrap();
        let answer = answer_binding_request(&request, from, Some(other)).unwrap();
        assert!(answer.from_other);
        assert!(answer.bytes.len() <= request.len());
        assert_eq!(parse_binding_response(&answer.bytes).unwrap().id, id);
        assert_eq!(answer_binding_request(&request, from, None), None);
    }

    #[test]
    fn bare_requests_and_garbage_get_no_answer() {
        let bare = encode(&StunMessageBuilder::new(BINDING, MessageClass::Request).build());
        let from = "192.0.2.7:1".parse().unwrap();
        assert_eq!(answer_binding_request(&bare, from, None), None);
        assert_eq!(answer_binding_request(b"\x00\x01garbage", from, None), None);
        assert_eq!(parse_binding_response(b"\x01\x01\x00"), None);
    }
}
