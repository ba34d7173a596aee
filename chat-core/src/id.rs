//! Newtype identifiers.
//!
//! Every id is its own type so a user id can never be passed where a channel
//! id is expected. [`MessageId`] is a `u64` but travels on the wire as a
//! decimal *string*: JSON numbers above 2^53 lose precision in JavaScript
//! clients, and Snowflake ids are well above that.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = Uuid))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new random id.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            /// The id as its 16 big-endian bytes, the form used in storage keys.
            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            /// Rebuilds an id from the bytes of [`Self::as_bytes`].
            pub fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(Uuid::from_bytes(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// One installation of a client (a phone, a browser tab, a desktop app).
    /// Chosen by the client once and kept, so its sync cursor survives restarts.
    DeviceId
);
uuid_id!(
    /// A conversation: a direct channel between two users or a group.
    ChannelId
);

/// Namespace for deterministic direct-channel ids (UUIDv5).
const DIRECT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1c_3f0e_9a51_4b7e_8d2f_0c6a_1e3b_5a77);

impl ChannelId {
    /// The id of the direct channel between `a` and `b`, the same whichever
    /// order they are given in and on every server, so opening a direct
    /// channel twice (or from two servers at once) yields one channel.
    pub fn direct(a: UserId, b: UserId) -> Self {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let mut name = [0u8; 32];
        name[..16].copy_from_slice(lo.as_bytes());
        name[16..].copy_from_slice(hi.as_bytes());
        Self(Uuid::new_v5(&DIRECT_NAMESPACE, &name))
    }
}

/// A message id: unique and ordered by time (see [`crate::idgen`]).
///
/// Messages are always ordered by this id, never by `created_at`, since two
/// messages can share a timestamp.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, pattern = "^[0-9]{1,20}$", example = "1234567890123456789")
)]
pub struct MessageId(pub u64);

impl MessageId {
    /// The smallest id; "everything after `MessageId::ZERO`" is everything.
    pub const ZERO: MessageId = MessageId(0);
    /// The largest id.
    pub const MAX: MessageId = MessageId(u64::MAX);

    /// The id as 8 big-endian bytes, so byte order equals numeric order in
    /// ordered key-value stores.
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    /// Rebuilds an id from [`Self::to_be_bytes`].
    pub fn from_be_bytes(bytes: [u8; 8]) -> Self {
        Self(u64::from_be_bytes(bytes))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

impl FromStr for MessageId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(MessageId)
    }
}

impl Serialize for MessageId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept the canonical string form and, leniently, a JSON number.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Str(String),
            Num(u64),
        }
        match Repr::deserialize(d)? {
            Repr::Str(s) => s.parse().map_err(serde::de::Error::custom),
            Repr::Num(n) => Ok(MessageId(n)),
        }
    }
}

/// The idempotency key a client attaches to a send.
///
/// Scoped to the sender: the same user sending the same `ClientMsgId` twice is
/// a retry. 1 to [`ClientMsgId::MAX_LEN`] printable ASCII characters; the SDK
/// uses a UUID.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::ToSchema),
    schema(value_type = String, pattern = "^[!-~]{1,64}$")
)]
#[serde(try_from = "String", into = "String")]
pub struct ClientMsgId(String);

impl ClientMsgId {
    /// Longest accepted client message id, in bytes.
    pub const MAX_LEN: usize = 64;

    /// Validates and wraps a client message id.
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidClientMsgId> {
        let s = s.into();
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidClientMsgId);
        }
        Ok(Self(s))
    }

    /// A fresh random id (a UUID), as the SDK uses.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4().to_string())
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client message id was empty, too long or not printable ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("client message id must be 1 to 64 printable ASCII characters")]
pub struct InvalidClientMsgId;

impl TryFrom<String> for ClientMsgId {
    type Error = InvalidClientMsgId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<ClientMsgId> for String {
    fn from(id: ClientMsgId) -> String {
        id.0
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientMsgId({:?})", self.0)
    }
}

uuid_id!(
    /// An uploaded file (see [`crate::attachment`]): assigned by the server
    /// at upload, never by the client.
    AttachmentId
);
uuid_id!(
    /// The bytes of a file in a [`crate::BlobStore`]: assigned by the store
    /// at `put`.
    BlobId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_channel_id_is_symmetric_and_distinct() {
        let a = UserId::new_random();
        let b = UserId::new_random();
        let c = UserId::new_random();
        assert_eq!(ChannelId::direct(a, b), ChannelId::direct(b, a));
        assert_ne!(ChannelId::direct(a, b), ChannelId::direct(a, c));
    }

    #[test]
    fn message_id_round_trips_as_string() {
        let id = MessageId(u64::MAX - 7);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", u64::MAX - 7));
        assert_eq!(serde_json::from_str::<MessageId>(&json).unwrap(), id);
        assert_eq!(
            serde_json::from_str::<MessageId>("42").unwrap(),
            MessageId(42)
        );
        assert!(serde_json::from_str::<MessageId>("\"x\"").is_err());
    }

    #[test]
    fn client_msg_id_is_validated() {
        assert!(ClientMsgId::new("abc-123").is_ok());
        assert!(ClientMsgId::new("").is_err());
        assert!(ClientMsgId::new("a b").is_err());
        assert!(ClientMsgId::new("x".repeat(65)).is_err());
        assert!(serde_json::from_str::<ClientMsgId>("\"\"").is_err());
    }
}
