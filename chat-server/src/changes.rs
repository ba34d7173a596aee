//! Edits, deletions and reactions (see `chat_core::changes`): checked
//! here (members only, the actor is the authenticated user, content and
//! reactions bounded like sends), stored by `MessageStore::change` in
//! history and every member's inbox, then published live like a message.

use std::sync::atomic::Ordering;

use chat_core::protocol::{ErrorCode, ReplyBody};
use chat_core::{
    Action, BusEvent, ChannelId, DeviceId, Envelope, Message, MessageId, NewChange, UserId,
};

use crate::server::{err, wire, ApiResult, ChatServer, Inner};

impl ChatServer {
    /// Edits, deletes or reacts to message `message_id` of `channel` as
    /// `actor` (from `device`, which learns of it from the answer; the
    /// actor's other devices and the other members get
    /// `Event::Changed`, live or by sync).
    ///
    /// * A non-member, or a channel that does not exist, is `not_found`
    ///   (as for sends: nobody learns which channels exist); a message not
    ///   in the channel is `not_found`.
    /// * An edit of another user's message, and a deletion by anyone but
    ///   the sender or the group's owner, is `forbidden`; an edit of, or a
    ///   reaction to, a deleted message is `conflict`.
    /// * Edited content follows the rules of a send (not empty, at most
    ///   `max_message_chars`, no control characters but tabs and line
    ///   breaks) and is charged to the same byte rate; a reaction is 1 to
    ///   32 bytes with no control character or space, at most 20 per user
    ///   and message (`limit_exceeded`).
    /// * The same change again changes nothing and answers `unchanged`.
    pub async fn change(
        &self,
        actor: UserId,
        device: DeviceId,
        channel: ChannelId,
        message_id: MessageId,
        action: Action,
    ) -> ApiResult<ReplyBody> {
        let inner = &self.inner;
        match &action {
            Action::Edit { content } => {
                self.charge(actor, content)?;
                let max = inner.config.max_message_chars;
                if content.is_empty() {
                    return Err(err(ErrorCode::InvalidInput, "message content is empty"));
                }
                if content.len() > max && content.chars().count() > max {
                    return Err(err(
                        ErrorCode::MessageTooLarge,
                        format!("message content is over {max} characters"),
                    ));
                }
                chat_core::text::validate_message_text(content).map_err(wire)?;
            }
            Action::React { emoji } | Action::Unreact { emoji } => {
                chat_core::changes::validate_emoji(emoji).map_err(wire)?;
                self.charge(actor, emoji)?;
            }
            _ => {}
        }
        self.member_channel(actor, channel).await?;
        let change = NewChange {
            channel_id: channel,
            message_id,
            actor,
            action,
            at: inner.clock.now_ms(),
            timeout: inner.config.send_timeout,
        };
        let changed =
            match tokio::time::timeout(inner.config.send_timeout, inner.messages.change(change))
                .await
            {
                Ok(r) => r.map_err(wire)?,
                Err(_) => {
                    return Err(err(
                        ErrorCode::Unavailable,
                        "storage did not answer in time, retry later",
                    ))
                }
            };
        let seq = changed.position_of(actor);
        if !changed.unchanged {
            let recipients: Vec<UserId> = changed.positions.iter().map(|(u, _)| *u).collect();
            let envelope = Envelope {
                event: BusEvent::Changed {
                    message: changed.message.clone(),
                    change: changed.change.clone(),
                    positions: changed.positions.clone(),
                },
                skip_device: Some(device),
            };
            self.publish_or_redeliver(recipients, envelope).await;
        }
        Ok(ReplyBody::Changed {
            message: Box::new(changed.message),
            change: changed.change,
            unchanged: changed.unchanged,
            seq,
        })
    }

    /// Charges `text` to the user's byte rate, as a send is.
    fn charge(&self, user: UserId, text: &str) -> ApiResult<()> {
        let charged = self.inner.send_quota.charge(user, text);
        if charged.is_err() {
            self.inner
                .stats
                .rate_limited
                .fetch_add(1, Ordering::Relaxed);
        }
        charged
    }
}

/// Fills the reactions of a history page, counted for `viewer`: one read
/// of the page's messages' reactions. A store that keeps none
/// (`Unsupported`) leaves them empty.
pub(crate) async fn add_reactions(
    inner: &Inner,
    viewer: UserId,
    channel: ChannelId,
    messages: &mut [Message],
) -> ApiResult<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
    let found = match inner.messages.reactions(channel, &ids, viewer).await {
        Ok(found) => found,
        Err(chat_core::Error::Unsupported { .. }) => return Ok(()),
        Err(e) => return Err(wire(e)),
    };
    let mut found = found.into_iter().peekable();
    for m in messages.iter_mut() {
        if let Some((_, reactions)) = found.next_if(|(id, _)| *id == m.id) {
            m.reactions = reactions;
        }
    }
    Ok(())
}
