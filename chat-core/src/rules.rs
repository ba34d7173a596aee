//! Rules every backend shares, so each backend decides duplicates, pages
//! and membership changes the same way.

use crate::directory::UserRecord;
use crate::error::{Error, Result};
use crate::id::{ChannelId, MessageId, UserId};
use crate::store::Appended;
use crate::types::{validate_username, Channel, ChannelKind, Message};

/// Decides an append against the message stored under the same idempotency
/// key `(channel, sender, client_msg_id)`, the one rule every history
/// backend shares: the same content is a duplicate, other content is a
/// conflict.
pub fn check_duplicate(existing: &Message, new: &Message) -> Result<Appended> {
    if existing.channel_id == new.channel_id && existing.content == new.content {
        Ok(Appended::Duplicate(existing.clone()))
    } else {
        Err(Error::conflict(format!(
            "client message id {} was already used for a different message",
            new.client_msg_id
        )))
    }
}

/// Checks a commit's proposed id against its channel's last id: the rule
/// every [`MessageStore`](crate::MessageStore) shares, so each channel's ids
/// increase in commit order. A proposed id that is not above the last one is
/// [`Error::StaleId`], and the caller proposes again above it.
pub fn check_channel_id(proposed: MessageId, last: MessageId) -> Result<MessageId> {
    if proposed > last {
        Ok(proposed)
    } else {
        Err(Error::StaleId { last })
    }
}

/// Validates a channel's shape before it is stored: the rule every directory
/// backend shares.
pub fn validate_new_channel(channel: &Channel) -> Result<Channel> {
    let mut channel = channel.clone();
    channel.members.sort();
    channel.members.dedup();
    match channel.kind {
        ChannelKind::Direct => {
            if channel.members.len() != 2
                || channel.id != ChannelId::direct(channel.members[0], channel.members[1])
            {
                return Err(Error::invalid(
                    "a direct channel has exactly two distinct members and the id ChannelId::direct(a, b)",
                ));
            }
        }
        ChannelKind::Group => {
            let owner = channel
                .owner
                .ok_or_else(|| Error::invalid("a group needs an owner"))?;
            if !channel.is_member(owner) {
                return Err(Error::invalid("a group's owner must be a member"));
            }
        }
    }
    Ok(channel)
}

/// Applies a membership change to a channel: the rule every directory
/// backend shares. Returns `None` when nothing changes.
pub fn apply_membership(
    channel: &Channel,
    user: UserId,
    add: bool,
    max_members: usize,
) -> Result<Option<Channel>> {
    if channel.kind == ChannelKind::Direct {
        return Err(Error::invalid(
            "the members of a direct channel cannot change",
        ));
    }
    if !add && channel.owner == Some(user) {
        return Err(Error::invalid("a group's owner cannot be removed from it"));
    }
    let present = channel.is_member(user);
    if add == present {
        return Ok(None);
    }
    let mut updated = channel.clone();
    if add {
        if channel.members.len() >= max_members {
            return Err(Error::LimitExceeded {
                limit: format!("a group has at most {max_members} members"),
            });
        }
        updated.members.push(user);
        updated.members.sort();
    } else {
        updated.members.retain(|m| *m != user);
    }
    Ok(Some(updated))
}

/// Checks a user about to be created: the username rule every directory
/// backend enforces.
pub fn validate_new_user(record: &UserRecord) -> Result<()> {
    validate_username(&record.user.username)
}
