//! `ternctl id`: this node's address and public key, read from its home (no daemon needed).

use crate::output::{Failure, Report};
use serde_json::json;
use tern_local::home::{Home, HomeError};

pub fn run(home: &Home) -> Result<Report, Failure> {
    let identity = home.load_identity().map_err(|e| match e {
        HomeError::NoIdentity { .. } => Failure::new("no_identity", e.to_string())
            .hint("start the node with `ternd`, or create the identity with `ternd id`"),
        other => Failure::new("identity_unreadable", other.to_string()),
    })?;
    let public = identity.public();
    let key = hex::encode(public.key_bytes());
    Ok(Report {
        data: json!({ "address": public.address(), "public_key": key }),
        text: format!("address     {}\npublic_key  {key}", public.address()),
    })
}
