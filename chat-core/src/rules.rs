//! Rules every backend shares, so each backend decides duplicates, pages
//! and membership changes the same way.

use crate::directory::{FriendOutcome, InviteOutcome, Limits, UserRecord};
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
/// backend shares. Returns `None` when nothing changes. (The caller checks
/// the new member's own cap, [`check_groups_joined`], when this adds.)
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

/// `LimitExceeded` unless `count` is below `max`: the one cap check every
/// directory backend uses. `what` names the cap for the message.
pub fn check_cap(count: usize, max: usize, what: &str) -> Result<()> {
    if count < max {
        Ok(())
    } else {
        Err(Error::LimitExceeded {
            limit: format!("{what} (at most {max})"),
        })
    }
}

/// The cap on a user joining one more group.
pub fn check_groups_joined(joined: usize, limits: &Limits) -> Result<()> {
    check_cap(joined, limits.groups_joined, "groups a user is a member of")
}

/// What a backend knows about two users when `from` asks `to` to be
/// friends, read atomically with the write that follows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FriendPair {
    /// Whether they are friends.
    pub friends: bool,
    /// Whether `from` has a pending request to `to`.
    pub requested: bool,
    /// Whether `to` has a pending request to `from`.
    pub incoming: bool,
    /// `from`'s friends.
    pub from_friends: usize,
    /// `to`'s friends.
    pub to_friends: usize,
    /// Pending requests `from` has sent (friend requests and invitations).
    pub from_sent: usize,
    /// Pending requests `to` has received (friend requests and invitations).
    pub to_received: usize,
}

/// Decides [`Directory::request_friend`](crate::Directory::request_friend)
/// from the pair's state: the rule every directory backend shares. The
/// backend then writes what the outcome says: for `Accepted`, remove the
/// request `to → from` and store the friendship; for `Requested`, store
/// the request `from → to`; otherwise nothing.
pub fn decide_friend_request(pair: &FriendPair, limits: &Limits) -> Result<FriendOutcome> {
    if pair.friends {
        return Ok(FriendOutcome::AlreadyFriends);
    }
    if pair.incoming {
        check_cap(pair.from_friends, limits.friends, "friends of a user")?;
        check_cap(pair.to_friends, limits.friends, "friends of a user")?;
        return Ok(FriendOutcome::Accepted);
    }
    if pair.requested {
        return Ok(FriendOutcome::AlreadyRequested);
    }
    check_cap(
        pair.from_sent,
        limits.pending_sent,
        "pending requests a user has sent",
    )?;
    check_cap(
        pair.to_received,
        limits.pending_received,
        "pending requests a user has received",
    )?;
    Ok(FriendOutcome::Requested)
}

/// `InvalidInput` for `request_friend(a, a)`.
pub fn check_friend_pair(from: UserId, to: UserId) -> Result<()> {
    if from == to {
        Err(Error::invalid("a user cannot befriend themselves"))
    } else {
        Ok(())
    }
}

/// Decides [`Directory::invite`](crate::Directory::invite): `Some` outcome
/// when nothing is to be written (already a member or invited), `None`
/// when a new invitation may be stored once the caps pass
/// ([`check_invite_caps`]). Only groups take invitations.
pub fn decide_invite(
    channel: &Channel,
    user: UserId,
    invited: bool,
) -> Result<Option<InviteOutcome>> {
    if channel.kind != ChannelKind::Group {
        return Err(Error::invalid("only groups take invitations"));
    }
    if channel.is_member(user) {
        return Ok(Some(InviteOutcome::AlreadyMember));
    }
    if invited {
        return Ok(Some(InviteOutcome::AlreadyInvited));
    }
    Ok(None)
}

/// The caps on a new invitation: the inviter's sent and the invitee's
/// received pending requests.
pub fn check_invite_caps(
    inviter_sent: usize,
    invitee_received: usize,
    limits: &Limits,
) -> Result<()> {
    check_cap(
        inviter_sent,
        limits.pending_sent,
        "pending requests a user has sent",
    )?;
    check_cap(
        invitee_received,
        limits.pending_received,
        "pending requests a user has received",
    )
}

/// The caps on a new group: its owner's owned groups and every member's
/// joined groups (`joined` in the order of `channel.members`). Direct
/// channels have none.
pub fn check_new_group_caps(
    channel: &Channel,
    owned: usize,
    joined: &[usize],
    limits: &Limits,
) -> Result<()> {
    if channel.kind != ChannelKind::Group {
        return Ok(());
    }
    check_cap(owned, limits.groups_owned, "groups a user owns")?;
    for n in joined {
        check_groups_joined(*n, limits)?;
    }
    Ok(())
}

/// The revoked-session records a user keeps after revoking `session` until
/// `until` at `now`: the records in `kept` that are still live plus the
/// new one, or `None` when that would be more than
/// [`MAX_REVOKED_SESSIONS`](crate::directory::MAX_REVOKED_SESSIONS) and
/// every session must be revoked instead (epoch + 1).
pub fn revoked_after(
    kept: impl IntoIterator<Item = (u64, u64)>,
    session: u64,
    until: u64,
    now: u64,
) -> Option<Vec<(u64, u64)>> {
    let mut live: Vec<(u64, u64)> = kept
        .into_iter()
        .filter(|(s, u)| *u > now && *s != session)
        .collect();
    live.push((session, until));
    (live.len() <= crate::directory::MAX_REVOKED_SESSIONS).then_some(live)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn friend_requests_decide_in_one_order() {
        let limits = Limits::default();
        let base = FriendPair::default();
        assert_eq!(
            decide_friend_request(&base, &limits).unwrap(),
            FriendOutcome::Requested
        );
        let crossed = FriendPair {
            incoming: true,
            requested: true,
            ..base
        };
        assert_eq!(
            decide_friend_request(&crossed, &limits).unwrap(),
            FriendOutcome::Accepted,
            "an incoming request is accepted whatever else is pending"
        );
        let friends = FriendPair {
            friends: true,
            incoming: true,
            ..base
        };
        assert_eq!(
            decide_friend_request(&friends, &limits).unwrap(),
            FriendOutcome::AlreadyFriends
        );
        let dup = FriendPair {
            requested: true,
            from_sent: 10_000,
            ..base
        };
        assert_eq!(
            decide_friend_request(&dup, &limits).unwrap(),
            FriendOutcome::AlreadyRequested,
            "a duplicate is a no-op even at the cap"
        );
        let full = FriendPair {
            from_sent: limits.pending_sent,
            ..base
        };
        assert!(matches!(
            decide_friend_request(&full, &limits),
            Err(Error::LimitExceeded { .. })
        ));
        let flooded = FriendPair {
            to_received: limits.pending_received,
            ..base
        };
        assert!(matches!(
            decide_friend_request(&flooded, &limits),
            Err(Error::LimitExceeded { .. })
        ));
        let popular = FriendPair {
            incoming: true,
            to_friends: limits.friends,
            ..base
        };
        assert!(matches!(
            decide_friend_request(&popular, &limits),
            Err(Error::LimitExceeded { .. })
        ));
    }

    #[test]
    fn revoked_records_expire_and_overflow_into_an_epoch() {
        let kept = vec![(1, 100), (2, 300)];
        assert_eq!(
            revoked_after(kept, 3, 400, 200),
            Some(vec![(2, 300), (3, 400)])
        );
        let full: Vec<(u64, u64)> = (0..crate::directory::MAX_REVOKED_SESSIONS as u64)
            .map(|s| (s, 1_000))
            .collect();
        assert_eq!(
            revoked_after(full.clone(), 5, 2_000, 0).map(|v| v.len()),
            Some(full.len())
        );
        assert_eq!(revoked_after(full, u64::MAX, 2_000, 0), None);
    }
}
