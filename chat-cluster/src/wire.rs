//! What crosses a broker between two nodes: an envelope and the users it is
//! for on the receiving node.
//!
//! The envelope is serde data (`chat_core::Envelope`) encoded with
//! serde_json, once per publish however many nodes receive it; each node's
//! copy only adds its own list of users in front. Nothing here looks inside
//! the envelope.

use chat_core::{Envelope, Error, Result, UserId};
use serde::Deserialize;

/// A delivery as it crosses the broker: `{"u": [users], "e": envelope}`.
#[derive(Deserialize)]
struct Delivery {
    u: Vec<UserId>,
    e: Envelope,
}

/// Encodes an envelope, once per publish.
pub(crate) fn encode_envelope(envelope: &Envelope) -> Result<Vec<u8>> {
    serde_json::to_vec(envelope).map_err(|e| Error::backend("bus encoding", e))
}

/// One node's copy: its users, then the encoded envelope. (The Redis bus's
/// publish script builds the same shape on the server.)
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn delivery(users: &[UserId], envelope_json: &[u8]) -> Result<Vec<u8>> {
    let users = serde_json::to_vec(users).map_err(|e| Error::backend("bus encoding", e))?;
    let mut out = Vec::with_capacity(envelope_json.len() + users.len() + 16);
    out.extend_from_slice(b"{\"u\":");
    out.extend_from_slice(&users);
    out.extend_from_slice(b",\"e\":");
    out.extend_from_slice(envelope_json);
    out.push(b'}');
    Ok(out)
}

/// Decodes a node's copy; an error for anything malformed (another version
/// of the software, or a stranger publishing under the prefix).
pub(crate) fn decode(bytes: &[u8]) -> Result<(Vec<UserId>, Envelope)> {
    let d: Delivery =
        serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("bus delivery: {e}")))?;
    Ok((d.u, d.e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{BusEvent, Presence, PresenceStatus};

    #[test]
    fn round_trip_and_garbage() {
        let env = Envelope {
            event: BusEvent::Presence {
                presence: Presence {
                    user: UserId::new_random(),
                    status: PresenceStatus::Online,
                    last_active_at: Some(5),
                },
            },
            skip_device: None,
        };
        let users = vec![UserId::new_random(), UserId::new_random()];
        let json = encode_envelope(&env).expect("encode");
        let (u, e) = decode(&delivery(&users, &json).expect("delivery")).expect("decode");
        assert_eq!((u, e), (users, env));
        assert!(decode(b"{\"u\":[1],\"e\":{}}").is_err());
        assert!(decode(b"\xff").is_err());
        assert!(crate::check_prefix("chat-test_1").is_ok());
        for bad in ["", "a.b", "a b", "a/b", &"x".repeat(65)] {
            assert!(crate::check_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
