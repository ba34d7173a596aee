//! Changes to stored messages: edits, deletions and reactions.
//!
//! # Design: changes travel through the inboxes
//!
//! A change is stored like a message is: [`MessageStore::change`] updates
//! the message in its channel's history (the new content and `edited_at`,
//! a tombstone, the reaction set) and appends a **change entry** to the
//! inbox of every member of the channel, in one atomic write. A change
//! entry is an [`InboxEntry`] whose [`change`](crate::InboxEntry::change) says
//! what changed and whose `message` is the message's state just after the
//! change. So the existing machinery carries changes with no other path:
//!
//! * positions stay dense and a device that syncs from its cursor gets the
//!   messages and the changes to them in the order they were committed
//!   (a change always comes after the message it changes);
//! * live delivery publishes the change entry like a message (through the
//!   delivery bus, so to every node), and a device that was offline gets it
//!   by its next sync;
//! * history pages show each message's current state: the edited text and
//!   `edited_at`, the tombstone of a deleted message (no content), and the
//!   reactions counted per emoji.
//!
//! A device applies a change entry by replacing its copy of the message
//! with the entry's `message` (edits and deletions) or by counting the
//! reaction in or out; every device that applies the same entries in
//! position order converges on the same state.
//!
//! [`MessageStore::change`]: crate::MessageStore::change
//! [`InboxEntry`]: crate::InboxEntry

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{ChannelId, MessageId, UserId};
use crate::store::Seq;
use crate::types::Message;

/// Most distinct reactions one user may have on one message.
pub const MAX_REACTIONS_PER_USER: usize = 20;

/// Longest reaction, in UTF-8 bytes (an emoji with its modifiers and
/// joiners, or a short code such as `:+1:`).
pub const MAX_EMOJI_BYTES: usize = 32;

/// Checks a reaction: 1 to [`MAX_EMOJI_BYTES`] bytes with no control
/// character, no whitespace and no bidirectional formatting character.
pub fn validate_emoji(emoji: &str) -> Result<()> {
    if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES {
        return Err(Error::invalid(format!(
            "a reaction is 1 to {MAX_EMOJI_BYTES} bytes"
        )));
    }
    if let Some(c) = emoji
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || crate::text::is_bidi_control(*c))
    {
        return Err(Error::invalid(format!(
            "a reaction may not contain U+{:04X} (control, whitespace or bidi)",
            c as u32
        )));
    }
    Ok(())
}

/// What a change did to a message, as inbox entries, events and replies
/// carry it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Change {
    /// The sender replaced the content: the entry's message carries the
    /// new content and `edited_at`.
    Edited {},
    /// The message was deleted: the entry's message is its tombstone (no
    /// content, `deleted: true`, no reactions).
    Deleted {
        /// Who deleted it: the sender, or the owner of the group.
        by: UserId,
    },
    /// `user` added the reaction `emoji`.
    Reacted {
        /// Who reacted.
        user: UserId,
        /// The reaction.
        emoji: String,
    },
    /// `user` took back the reaction `emoji`.
    Unreacted {
        /// Who took it back.
        user: UserId,
        /// The reaction.
        emoji: String,
    },
}

/// One reaction of a message in a history page: how many members reacted
/// with `emoji`, and whether the reader is one of them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reactions {
    /// The reaction.
    pub emoji: String,
    /// How many users reacted with it.
    pub count: u32,
    /// Whether the user reading the page did.
    #[serde(default)]
    pub me: bool,
}

/// What a change asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Replace the content (the sender only).
    Edit {
        /// The new content, checked by the caller like a send's.
        content: String,
    },
    /// Delete the message (the sender, or the owner of the group).
    Delete,
    /// Add a reaction (any member), checked with [`validate_emoji`].
    React {
        /// The reaction.
        emoji: String,
    },
    /// Take a reaction back.
    Unreact {
        /// The reaction.
        emoji: String,
    },
}

/// A change on its way into the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChange {
    /// The message's channel.
    pub channel_id: ChannelId,
    /// The message.
    pub message_id: MessageId,
    /// The authenticated user making the change.
    pub actor: UserId,
    /// What to do.
    pub action: Action,
    /// Server time of the change, Unix milliseconds (`edited_at` of an edit).
    pub at: u64,
    /// How long the store may take before it starts the write, as
    /// [`NewMessage::timeout`](crate::NewMessage::timeout).
    pub timeout: Duration,
}

/// What [`MessageStore::change`](crate::MessageStore::change) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The message after the change (as it is now, for an unchanged one),
    /// without its reactions.
    pub message: Message,
    /// What the change did (or would have done).
    pub change: Change,
    /// `true` if the message already was in the asked state (the same
    /// content, already deleted, already reacted, no such reaction):
    /// nothing was written and `positions` is empty.
    pub unchanged: bool,
    /// The change entry's position in the inbox of every member it was
    /// fanned out to (every member at the time of the change), sorted by
    /// user.
    pub positions: Vec<(UserId, Seq)>,
}

impl Changed {
    /// The change entry's position in `user`'s inbox, if it reached them.
    pub fn position_of(&self, user: UserId) -> Option<Seq> {
        self.positions
            .binary_search_by_key(&user, |(u, _)| *u)
            .ok()
            .map(|i| self.positions[i].1)
    }
}

/// The outcome of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to write: the message already is in the asked state.
    Unchanged(Change),
    /// Write `message` (the new state) and fan `change` out.
    Apply {
        /// The message after the change.
        message: Message,
        /// What changed.
        change: Change,
    },
}

/// Decides a change against the stored message: the rule every backend
/// shares. `owner` is the owner of the message's group (`None` for a direct
/// channel); `reacted` are the reactions the actor has on the message now.
/// The caller has checked that the channel exists and the actor is a member.
///
/// * An edit is the sender's only ([`Error::Forbidden`] otherwise), of a
///   message not deleted ([`Error::Conflict`]); the same content again is
///   unchanged.
/// * A deletion is the sender's or the group owner's (`Forbidden`
///   otherwise); a message already deleted is unchanged.
/// * A reaction on a deleted message is a `Conflict`; one the actor already
///   has is unchanged; past [`MAX_REACTIONS_PER_USER`] distinct reactions
///   it is [`Error::LimitExceeded`]. Taking back a reaction the actor does
///   not have is unchanged.
pub fn decide(
    current: &Message,
    owner: Option<UserId>,
    change: &NewChange,
    reacted: &[String],
) -> Result<Decision> {
    let actor = change.actor;
    match &change.action {
        Action::Edit { content } => {
            if actor != current.sender {
                return Err(Error::forbidden("only the sender may edit a message"));
            }
            if current.deleted {
                return Err(Error::conflict("the message is deleted"));
            }
            if current.content == *content {
                return Ok(Decision::Unchanged(Change::Edited {}));
            }
            let mut message = current.clone();
            message.content = content.clone();
            message.edited_at = Some(change.at);
            message.reactions = Vec::new();
            Ok(Decision::Apply {
                message,
                change: Change::Edited {},
            })
        }
        Action::Delete => {
            if actor != current.sender && Some(actor) != owner {
                return Err(Error::forbidden(
                    "only the sender or the group's owner may delete a message",
                ));
            }
            let change = Change::Deleted { by: actor };
            if current.deleted {
                return Ok(Decision::Unchanged(change));
            }
            Ok(Decision::Apply {
                message: tombstone(current),
                change,
            })
        }
        Action::React { emoji } => {
            let change = Change::Reacted {
                user: actor,
                emoji: emoji.clone(),
            };
            if current.deleted {
                return Err(Error::conflict("the message is deleted"));
            }
            if reacted.iter().any(|e| e == emoji) {
                return Ok(Decision::Unchanged(change));
            }
            if reacted.len() >= MAX_REACTIONS_PER_USER {
                return Err(Error::LimitExceeded {
                    limit: format!(
                        "at most {MAX_REACTIONS_PER_USER} reactions per user and message"
                    ),
                });
            }
            Ok(Decision::Apply {
                message: without_reactions(current),
                change,
            })
        }
        Action::Unreact { emoji } => {
            let change = Change::Unreacted {
                user: actor,
                emoji: emoji.clone(),
            };
            if !reacted.iter().any(|e| e == emoji) {
                return Ok(Decision::Unchanged(change));
            }
            Ok(Decision::Apply {
                message: without_reactions(current),
                change,
            })
        }
    }
}

/// A deleted message as it is kept: no content, `deleted`, no reactions;
/// its id, channel, sender, times and `reply_to` stay.
pub fn tombstone(message: &Message) -> Message {
    Message {
        content: String::new(),
        deleted: true,
        reactions: Vec::new(),
        // Its files go with the content: a tombstone references none.
        attachments: Vec::new(),
        ..message.clone()
    }
}

fn without_reactions(message: &Message) -> Message {
    Message {
        reactions: Vec::new(),
        ..message.clone()
    }
}

/// Counts reactions: `(emoji, user)` pairs, in any order, into one
/// [`Reactions`] per emoji, sorted by emoji, `me` set where `viewer`
/// reacted.
pub fn count_reactions<'a>(
    pairs: impl IntoIterator<Item = (&'a str, UserId)>,
    viewer: UserId,
) -> Vec<Reactions> {
    let mut by_emoji: std::collections::BTreeMap<&str, (u32, bool)> = Default::default();
    for (emoji, user) in pairs {
        let e = by_emoji.entry(emoji).or_default();
        e.0 = e.0.saturating_add(1);
        e.1 |= user == viewer;
    }
    by_emoji
        .into_iter()
        .map(|(emoji, (count, me))| Reactions {
            emoji: emoji.to_owned(),
            count,
            me,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::ClientMsgId;

    fn message(sender: UserId) -> Message {
        Message {
            id: MessageId(7),
            channel_id: ChannelId::new_random(),
            sender,
            content: "hello".into(),
            created_at: 1,
            client_msg_id: ClientMsgId::new_random(),
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            attachments: Vec::new(),
        }
    }

    fn new(actor: UserId, action: Action) -> NewChange {
        NewChange {
            channel_id: ChannelId::new_random(),
            message_id: MessageId(7),
            actor,
            action,
            at: 99,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn emoji_rules() {
        assert!(validate_emoji("👍").is_ok());
        assert!(validate_emoji("👩‍👩‍👧‍👦").is_ok());
        assert!(validate_emoji(":+1:").is_ok());
        assert!(validate_emoji("").is_err());
        assert!(validate_emoji("a b").is_err());
        assert!(validate_emoji("x\u{7}").is_err());
        assert!(validate_emoji("\u{202E}x").is_err());
        assert!(validate_emoji(&"x".repeat(33)).is_err());
    }

    #[test]
    fn who_may_do_what() {
        let (alice, bob, owner) = (
            UserId::new_random(),
            UserId::new_random(),
            UserId::new_random(),
        );
        let m = message(alice);
        let edit = |who| {
            new(
                who,
                Action::Edit {
                    content: "hi".into(),
                },
            )
        };
        assert!(matches!(
            decide(&m, None, &edit(bob), &[]),
            Err(Error::Forbidden { .. })
        ));
        let Decision::Apply { message, .. } = decide(&m, None, &edit(alice), &[]).unwrap() else {
            panic!("an edit by the sender applies");
        };
        assert_eq!(
            (message.content.as_str(), message.edited_at),
            ("hi", Some(99))
        );
        assert!(matches!(
            decide(&message, None, &edit(alice), &[]).unwrap(),
            Decision::Unchanged(Change::Edited {})
        ));
        assert!(matches!(
            decide(&m, None, &new(bob, Action::Delete), &[]),
            Err(Error::Forbidden { .. })
        ));
        let Decision::Apply { message: gone, .. } =
            decide(&m, Some(owner), &new(owner, Action::Delete), &[]).unwrap()
        else {
            panic!("the owner deletes");
        };
        assert!(gone.deleted && gone.content.is_empty() && gone.attachments.is_empty());
        assert!(matches!(
            decide(&gone, None, &new(alice, Action::Delete), &[]).unwrap(),
            Decision::Unchanged(_)
        ));
        assert!(matches!(
            decide(&gone, None, &edit(alice), &[]),
            Err(Error::Conflict { .. })
        ));
        let react = |e: &str| new(bob, Action::React { emoji: e.into() });
        let full: Vec<String> = (0..MAX_REACTIONS_PER_USER).map(|i| i.to_string()).collect();
        assert!(matches!(
            decide(&m, None, &react("x"), &full),
            Err(Error::LimitExceeded { .. })
        ));
        assert!(matches!(
            decide(&m, None, &react("0"), &full).unwrap(),
            Decision::Unchanged(_)
        ));
        assert!(matches!(
            decide(
                &m,
                None,
                &new(bob, Action::Unreact { emoji: "y".into() }),
                &[]
            )
            .unwrap(),
            Decision::Unchanged(_)
        ));
    }

    #[test]
    fn counts_per_emoji() {
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let counted = count_reactions([("👍", a), ("👍", b), ("🎉", b)], a);
        assert_eq!(
            counted,
            vec![
                Reactions {
                    emoji: "🎉".into(),
                    count: 1,
                    me: false
                },
                Reactions {
                    emoji: "👍".into(),
                    count: 2,
                    me: true
                },
            ]
        );
    }
}
