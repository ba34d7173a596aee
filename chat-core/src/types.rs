//! Domain types: users, channels, messages, devices, presence.

use serde::{Deserialize, Serialize};

use crate::id::{ChannelId, ClientMsgId, DeviceId, MessageId, UserId};

/// Longest username, in bytes.
pub const MAX_USERNAME_LEN: usize = 32;

/// A user's public profile.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// Name shown to others.
    pub display_name: String,
    /// Free text ("about me").
    #[serde(default)]
    pub about: String,
}

/// A user account as others see it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// Unique login name (lowercase ASCII letters, digits, `_`, `-`, `.`;
    /// see [`validate_username`]).
    pub username: String,
    /// Public profile.
    pub profile: Profile,
    /// Creation time, Unix milliseconds.
    pub created_at: u64,
}

/// Checks a username: 1 to 32 characters of `a-z 0-9 _ - .`, starting with
/// a letter or a digit and not ending with `.`.
///
/// The first and last characters are restricted so that every name is an
/// ordinary path segment and an ordinary file name: `.`, `..` and names
/// like `.x` are special in URLs and file systems (`..` is not addressable
/// by path at all), names starting with `-` read as options on command
/// lines, and trailing dots are dropped by some file systems and URL
/// normalisers.
pub fn validate_username(name: &str) -> Result<(), crate::Error> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_USERNAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(b))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1] != b'.';
    if ok {
        Ok(())
    } else {
        Err(crate::Error::invalid(
            "username must be 1 to 32 characters of a-z, 0-9, '_', '-', '.', \
             starting with a letter or digit and not ending with '.'",
        ))
    }
}

/// Who may put a user into a group, or open a direct channel with them,
/// without asking first. Anyone else's addition to a group becomes an
/// [`Invitation`] the user accepts or declines; anyone else cannot open a
/// direct channel with the user (a friend request comes first).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhoMayAdd {
    /// Anyone.
    Everyone,
    /// Accepted friends only (the default).
    #[default]
    Friends,
    /// No one: the user joins groups only by accepting invitations, and
    /// opens direct channels themselves.
    Nobody,
}

/// A user's privacy settings, seen only by the user.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privacy {
    /// Who may add the user to a group or open a direct channel with them.
    #[serde(default)]
    pub who_may_add: WhoMayAdd,
    /// Never show others when the user was last active (their online
    /// status is still shown to friends and channel co-members).
    #[serde(default)]
    pub hide_last_seen: bool,
}

/// A friend request waiting for the other side's answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FriendRequest {
    /// Who asks.
    pub from: UserId,
    /// Who is asked.
    pub to: UserId,
    /// When it was asked, Unix milliseconds.
    pub created_at: u64,
}

/// An invitation to a group waiting for the invitee's answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// The group.
    pub channel: ChannelId,
    /// The group's name.
    pub group_name: String,
    /// Who invited (the group's owner).
    pub inviter: UserId,
    /// Who is invited.
    pub invitee: UserId,
    /// When, Unix milliseconds.
    pub created_at: u64,
}

/// What kind of conversation a channel is.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChannelKind {
    /// One-to-one between exactly two users; id is [`ChannelId::direct`].
    Direct,
    /// A small group with an owner.
    Group,
}

/// A conversation and its members.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// The channel's id.
    pub id: ChannelId,
    /// Direct or group.
    pub kind: ChannelKind,
    /// Group name; empty for direct channels.
    #[serde(default)]
    pub name: String,
    /// The group's owner (may add and remove members); `None` for direct channels.
    pub owner: Option<UserId>,
    /// Members, sorted by id.
    pub members: Vec<UserId>,
    /// Creation time, Unix milliseconds.
    pub created_at: u64,
}

impl Channel {
    /// The direct channel between two users.
    pub fn direct(a: UserId, b: UserId, created_at: u64) -> Self {
        let mut members = vec![a, b];
        members.sort();
        members.dedup();
        Self {
            id: ChannelId::direct(a, b),
            kind: ChannelKind::Direct,
            name: String::new(),
            owner: None,
            members,
            created_at,
        }
    }

    /// Whether `user` is a member.
    pub fn is_member(&self, user: UserId) -> bool {
        self.members.binary_search(&user).is_ok()
    }
}

/// A chat message.
///
/// The primary key is `(channel_id, id)`; `id` alone is unique too when ids
/// come from a globally ordered generator such as [`crate::Snowflake`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Server-assigned id, ordered by time.
    pub id: MessageId,
    /// The channel it was posted to.
    pub channel_id: ChannelId,
    /// The authenticated sender (never a field the client sets).
    pub sender: UserId,
    /// Text content.
    pub content: String,
    /// Server time of acceptance, Unix milliseconds. Informational only:
    /// order by `id`.
    pub created_at: u64,
    /// The sender's idempotency key for this message.
    pub client_msg_id: ClientMsgId,
    /// The message of the same channel this one answers (quotes), if any.
    /// The server checks that it exists in the channel before storing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// When the sender last edited the content, Unix milliseconds; `None`
    /// for a message never edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// Whether the message was deleted: then it is a tombstone, with no
    /// content and no reactions (see [`crate::changes`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The reactions, one per emoji with its count, sorted by emoji: set in
    /// history pages (for the user reading them), empty elsewhere.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<crate::changes::Reactions>,
    /// Files the message carries, at most
    /// [`MAX_ATTACHMENTS_PER_MESSAGE`](crate::MAX_ATTACHMENTS_PER_MESSAGE):
    /// the sender's own uploads, which the server binds to the channel at
    /// send (see [`crate::attachment`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::Attachment>,
}

#[cfg(test)]
impl Message {
    pub(crate) fn test_message(channel_id: ChannelId, id: MessageId) -> Self {
        Self {
            id,
            channel_id,
            sender: UserId::new_random(),
            content: format!("message {id}"),
            created_at: 0,
            client_msg_id: ClientMsgId::new_random(),
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            attachments: Vec::new(),
        }
    }
}

/// The kind of client a device is, which decides how it is pushed to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Platform {
    /// Apple devices (APNs).
    Ios,
    /// Android devices (FCM).
    Android,
    /// Browsers (Web Push or a webhook).
    Web,
    /// Desktop applications.
    Desktop,
    /// Anything else.
    Other,
}

/// A registered device of a user.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The device's id (chosen by the client, stable per installation).
    pub id: DeviceId,
    /// Its owner.
    pub user: UserId,
    /// What kind of client it is.
    pub platform: Platform,
    /// The push token issued by the platform (FCM registration token, APNs
    /// device token), if the device wants push notifications.
    pub push_token: Option<String>,
    /// Registration time, Unix milliseconds.
    pub created_at: u64,
}

/// Whether a user is reachable now.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one device sent a heartbeat within the timeout.
    Online,
    /// No device did.
    Offline,
}

/// A user's presence.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Whose presence.
    pub user: UserId,
    /// Online or offline.
    pub status: PresenceStatus,
    /// Time of the last heartbeat from any device, Unix milliseconds;
    /// `None` if never seen.
    pub last_active_at: Option<u64>,
}
