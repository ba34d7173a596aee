//! Consent: who may add whom to a group or open a direct channel with
//! them, live notices of requests and invitations, and whose presence a
//! user may see.
//!
//! The rules, in one place:
//!
//! * A user's [`WhoMayAdd`] setting says who may put them into a group or
//!   open a direct channel with them without asking (default: friends).
//!   Anyone else adding them to a group sends an invitation instead, which
//!   they accept or decline; anyone else cannot open a direct channel with
//!   them (a friend request comes first).
//! * Friendship is a request the other side accepts.
//! * Presence (status and last activity) is shown only to the user's
//!   friends and to members of a channel they share; to anyone else the
//!   user is offline with no last activity, exactly like a user never seen.
//!   A user who hides last-seen shows their status but never
//!   `last_active_at`.
//! * A user may block another: the blocked user cannot open a direct
//!   channel with them (`blocked`), their messages in an existing one are
//!   refused by the store's commit (`blocked`), and they are no contact of
//!   the blocker's any more (the directory leaves blockers out of
//!   `contacts`), so they see the blocker as offline and never seen, and
//!   get no presence events from them. Groups are not affected.

use chat_core::protocol::{ErrorCode, Event};
use chat_core::{
    BusEvent, Channel, Envelope, Invitation, InviteOutcome, Presence, PresenceStatus, UserId,
    WhoMayAdd, MAX_PAGE,
};

use crate::server::{err, wire, ApiResult, ChatServer};

/// What [`ChatServer::add_or_invite`] did.
#[derive(Debug)]
pub(crate) enum Joined {
    /// The user is a member now (or already was).
    Added(Channel),
    /// The user's settings ask for consent: an invitation is pending.
    Invited,
}

impl ChatServer {
    /// Whether `actor` may add `target` to a group, or open a direct
    /// channel with them, without asking. `not_found` for an unknown target.
    pub(crate) async fn may_add(&self, actor: UserId, target: UserId) -> ApiResult<bool> {
        let privacy = self.inner.directory.privacy(target).await.map_err(wire)?;
        Ok(match privacy.who_may_add {
            WhoMayAdd::Everyone => true,
            WhoMayAdd::Nobody => false,
            WhoMayAdd::Friends => self
                .inner
                .directory
                .friends(target)
                .await
                .map_err(wire)?
                .binary_search(&actor)
                .is_ok(),
        })
    }

    /// Whether `blocker` blocks `user`.
    pub(crate) async fn blocks(&self, blocker: UserId, user: UserId) -> ApiResult<bool> {
        Ok(self
            .inner
            .directory
            .blocked(blocker)
            .await
            .map_err(wire)?
            .binary_search(&user)
            .is_ok())
    }

    /// Sends `event` to `users`' connected devices. Best effort: what it
    /// announces is stored and listed either way.
    pub(crate) async fn notify(&self, users: &[UserId], event: Event) {
        let envelope = Envelope {
            event: BusEvent::Notice { event },
            skip_device: None,
        };
        if let Err(e) = self.inner.bus.publish(users, envelope).await {
            tracing::warn!(error = %e, "live notice failed; it is listed on request");
        }
    }

    /// Adds `user` to `group` on behalf of `actor` if `user`'s settings let
    /// `actor` do so, or invites them (and tells them live).
    pub(crate) async fn add_or_invite(
        &self,
        actor: UserId,
        group: &Channel,
        user: UserId,
    ) -> ApiResult<Joined> {
        let directory = &self.inner.directory;
        let limits = &self.config().limits;
        if self.may_add(actor, user).await? {
            let channel = directory
                .add_member(group.id, user, limits)
                .await
                .map_err(wire)?;
            return Ok(Joined::Added(channel));
        }
        let now = self.now();
        let outcome = directory
            .invite(group.id, user, actor, now, limits)
            .await
            .map_err(wire)?;
        match outcome {
            InviteOutcome::Invited => {
                let invitation = Invitation {
                    channel: group.id,
                    group_name: group.name.clone(),
                    inviter: actor,
                    invitee: user,
                    created_at: now,
                };
                self.notify(&[user], Event::Invitation { invitation }).await;
                Ok(Joined::Invited)
            }
            InviteOutcome::AlreadyInvited => Ok(Joined::Invited),
            InviteOutcome::AlreadyMember => {
                let channel = directory
                    .channel(group.id)
                    .await
                    .map_err(wire)?
                    .ok_or_else(|| err(ErrorCode::NotFound, "channel not found"))?;
                Ok(Joined::Added(channel))
            }
        }
    }

    /// Presence of `users` as `viewer` may see it (see the module docs):
    /// the viewer's own in full; their contacts' (friends and channel
    /// co-members) with `last_active_at` unless hidden; everyone else's as
    /// offline and never seen.
    pub async fn presence_of(&self, viewer: UserId, users: &[UserId]) -> ApiResult<Vec<Presence>> {
        if users.len() > MAX_PAGE {
            return Err(err(
                ErrorCode::InvalidInput,
                format!("at most {MAX_PAGE} users per presence query"),
            ));
        }
        let contacts = self
            .inner
            .directory
            .contacts(viewer, users)
            .await
            .map_err(wire)?;
        let statuses = self.inner.presence.status(users).await.map_err(wire)?;
        Ok(statuses
            .into_iter()
            .map(|p| {
                if p.user == viewer {
                    return p;
                }
                match contacts.iter().find(|c| c.user == p.user) {
                    Some(c) if c.privacy.hide_last_seen => Presence {
                        last_active_at: None,
                        ..p
                    },
                    Some(_) => p,
                    None => Presence {
                        user: p.user,
                        status: PresenceStatus::Offline,
                        last_active_at: None,
                    },
                }
            })
            .collect())
    }

    /// `presence` as the user's friends are told of it: without
    /// `last_active_at` if the user hides it (and, if their settings cannot
    /// be read, without it too: hiding is the safe side).
    pub(crate) async fn shown_to_friends(&self, presence: Presence) -> Presence {
        let hide = match self.inner.directory.privacy(presence.user).await {
            Ok(p) => p.hide_last_seen,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read privacy settings for a presence change");
                true
            }
        };
        if hide {
            Presence {
                last_active_at: None,
                ..presence
            }
        } else {
            presence
        }
    }
}
