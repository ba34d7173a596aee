//! Key encodings. Every id is fixed-width (16-byte UUIDs, 8-byte big-endian
//! message ids), so concatenated keys sort first by their leading id, then
//! by the next, and a prefix of whole ids is a contiguous key range.

use chat_core::{ChannelId, ClientMsgId, Error, MessageId, Result, Seq, UserId};

/// `channel_id ++ message_id`: a channel's history is one range, by id.
pub(super) fn history(channel: ChannelId, id: MessageId) -> [u8; 24] {
    id_key(channel.as_bytes(), id)
}

/// `user_id ++ message_id`: a user's inbox is one range, by id.
pub(super) fn inbox(user: UserId, seq: Seq) -> [u8; 24] {
    id_key(user.as_bytes(), MessageId(seq.0))
}

/// `channel_id ++ message_id ++ user_id ++ emoji` (UTF-8): a message's
/// reactions are one range, and one user's reactions to it a range inside.
pub(super) fn reaction(channel: ChannelId, id: MessageId, user: UserId, emoji: &str) -> Vec<u8> {
    let mut key = reactions_of(channel, id, Some(user));
    key.extend_from_slice(emoji.as_bytes());
    key
}

/// The prefix of the reactions of a message, or of one user's reactions to
/// it.
pub(super) fn reactions_of(channel: ChannelId, id: MessageId, user: Option<UserId>) -> Vec<u8> {
    let mut key = Vec::with_capacity(40 + chat_core::changes::MAX_EMOJI_BYTES);
    key.extend_from_slice(&history(channel, id));
    if let Some(user) = user {
        key.extend_from_slice(user.as_bytes());
    }
    key
}

/// The user and emoji of a [`reaction`] key.
pub(super) fn parse_reaction(key: &[u8]) -> Result<(UserId, String)> {
    if key.len() <= 40 {
        return Err(corrupt("reaction key", "too short"));
    }
    let user = UserId::from_bytes(parse_id16(&key[24..40], "reaction key")?);
    let emoji = std::str::from_utf8(&key[40..])
        .map_err(|e| corrupt("reaction key", e))?
        .to_owned();
    Ok((user, emoji))
}

/// `channel_id ++ sender ++ client_msg_id` (the client message id's ASCII
/// bytes; the ids are fixed-width, so no separator is needed): the
/// idempotency key is scoped to the channel, like the history key.
pub(super) fn idempotency(
    channel: ChannelId,
    sender: UserId,
    client_msg_id: &ClientMsgId,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + client_msg_id.as_str().len());
    key.extend_from_slice(channel.as_bytes());
    key.extend_from_slice(sender.as_bytes());
    key.extend_from_slice(client_msg_id.as_str().as_bytes());
    key
}

/// The format-1 idempotency key `sender ++ client_msg_id` rewritten as
/// [`idempotency`] with the channel of its record's value.
pub(super) fn upgrade_idempotency_v1(old_key: &[u8], value: &[u8]) -> Result<Vec<u8>> {
    let (channel, _) = split_id_key(value, "format-1 idempotency record")?;
    let mut key = Vec::with_capacity(16 + old_key.len());
    key.extend_from_slice(&channel);
    key.extend_from_slice(old_key);
    Ok(key)
}

/// The idempotency record's value: where the original message is,
/// `channel_id ++ message_id`.
pub(super) fn idempotency_value(
    channel: ChannelId,
    id: MessageId,
    positions: &[(UserId, Seq)],
) -> Vec<u8> {
    let mut value = Vec::with_capacity(24 + 24 * positions.len());
    value.extend_from_slice(&history(channel, id));
    for (user, seq) in positions {
        value.extend_from_slice(&id_key(user.as_bytes(), MessageId(seq.0)));
    }
    value
}

/// Positions of an idempotency record.
pub(super) type Positions = Vec<(UserId, Seq)>;

pub(super) fn parse_idempotency_value(bytes: &[u8]) -> Result<(ChannelId, MessageId, Positions)> {
    const WHAT: &str = "idempotency record";
    if bytes.len() < 24 || !bytes.len().is_multiple_of(24) {
        return Err(corrupt(WHAT, "length is not a multiple of 24 bytes"));
    }
    let (channel, id) = split_id_key(&bytes[..24], WHAT)?;
    let positions = bytes[24..]
        .chunks_exact(24)
        .map(|chunk| {
            let (user, seq) = split_id_key(chunk, WHAT)?;
            Ok((UserId::from_bytes(user), Seq(seq.0)))
        })
        .collect::<Result<_>>()?;
    Ok((ChannelId::from_bytes(channel), id, positions))
}

/// The leading 16-byte id and the trailing 8-byte number of a history or
/// inbox key.
pub(super) fn parse_id_key(key: &[u8], what: &'static str) -> Result<([u8; 16], MessageId)> {
    split_id_key(key, what)
}

pub(super) fn pair(a: &[u8; 16], b: &[u8; 16]) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(a);
    key[16..].copy_from_slice(b);
    key
}

/// The second id of a [`pair`] key.
pub(super) fn pair_second(key: &[u8]) -> Result<[u8; 16]> {
    if key.len() != 32 {
        return Err(corrupt("pair key", "length is not 32 bytes"));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&key[16..]);
    Ok(id)
}

/// `a ++ b ++ c` for three 16-byte ids: invitations by inviter
/// (`inviter ++ invitee ++ channel`).
pub(super) fn triple(a: &[u8; 16], b: &[u8; 16], c: &[u8; 16]) -> [u8; 48] {
    let mut key = [0u8; 48];
    key[..16].copy_from_slice(a);
    key[16..32].copy_from_slice(b);
    key[32..].copy_from_slice(c);
    key
}

/// The second and third ids of a [`triple`] key.
pub(super) fn triple_tail(key: &[u8]) -> Result<([u8; 16], [u8; 16])> {
    if key.len() != 48 {
        return Err(corrupt("triple key", "length is not 48 bytes"));
    }
    let mut b = [0u8; 16];
    let mut c = [0u8; 16];
    b.copy_from_slice(&key[16..32]);
    c.copy_from_slice(&key[32..]);
    Ok((b, c))
}

/// `user_id ++ session` (8 bytes big-endian): a revoked session.
pub(super) fn session(user: UserId, session: u64) -> [u8; 24] {
    id_key(user.as_bytes(), MessageId(session))
}

/// The session of a [`session`] key.
pub(super) fn parse_session(key: &[u8]) -> Result<u64> {
    Ok(split_id_key(key, "revoked session key")?.1 .0)
}

/// A `u64` stored as 8 bytes big-endian (a time).
pub(super) fn parse_u64(bytes: &[u8], what: &'static str) -> Result<u64> {
    Ok(parse_message_id(bytes, what)?.0)
}

/// A 16-byte id stored as a value.
pub(super) fn parse_id16(bytes: &[u8], what: &'static str) -> Result<[u8; 16]> {
    bytes
        .try_into()
        .map_err(|_| corrupt(what, "length is not 16 bytes"))
}

/// A message id stored as a value (a cursor).
pub(super) fn parse_message_id(bytes: &[u8], what: &'static str) -> Result<MessageId> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(what, "length is not 8 bytes"))?;
    Ok(MessageId::from_be_bytes(bytes))
}

fn id_key(prefix: &[u8; 16], id: MessageId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(prefix);
    key[16..].copy_from_slice(&id.to_be_bytes());
    key
}

fn split_id_key(bytes: &[u8], what: &'static str) -> Result<([u8; 16], MessageId)> {
    if bytes.len() != 24 {
        return Err(corrupt(what, "length is not 24 bytes"));
    }
    let mut prefix = [0u8; 16];
    prefix.copy_from_slice(&bytes[..16]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[16..]);
    Ok((prefix, MessageId::from_be_bytes(id)))
}

/// Stored data that does not decode: corruption or a foreign format.
pub(super) fn corrupt(what: &'static str, detail: impl std::fmt::Display) -> Error {
    Error::backend("fjall", format!("corrupt {what}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keys_sort_by_channel_then_numeric_id() {
        let c = ChannelId::new_random();
        let ids = [0u64, 1, 255, 256, 65_535, 65_536, 1 << 40, u64::MAX];
        let keys: Vec<_> = ids.iter().map(|i| history(c, MessageId(*i))).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let other = ChannelId::new_random();
        let (lo, hi) = if c < other { (c, other) } else { (other, c) };
        assert!(history(lo, MessageId::MAX) < history(hi, MessageId::ZERO));
    }

    #[test]
    fn format_1_idempotency_keys_upgrade_to_channel_scoped_keys() {
        let (c, u) = (ChannelId::new_random(), UserId::new_random());
        let cmid = ClientMsgId::new("abc").unwrap();
        let old: Vec<u8> = [u.as_bytes().as_slice(), b"abc"].concat();
        let value = idempotency_value(c, MessageId(7), &[]);
        assert_eq!(
            upgrade_idempotency_v1(&old, &value).unwrap(),
            idempotency(c, u, &cmid)
        );
        assert!(upgrade_idempotency_v1(&old, &value[..10]).is_err());
    }

    #[test]
    fn idempotency_value_round_trips() {
        let c = ChannelId::new_random();
        let v = idempotency_value(c, MessageId(42), &[]);
        assert_eq!(
            parse_idempotency_value(&v).unwrap(),
            (c, MessageId(42), Vec::new())
        );
        assert!(parse_idempotency_value(&v[..23]).is_err());
        let positions = vec![
            (UserId::new_random(), Seq(3)),
            (UserId::new_random(), Seq(1 << 40)),
        ];
        let v = idempotency_value(c, MessageId(7), &positions);
        assert_eq!(
            parse_idempotency_value(&v).unwrap(),
            (c, MessageId(7), positions)
        );
        assert!(parse_idempotency_value(&v[..30]).is_err());
    }

    #[test]
    fn triple_and_session_keys_round_trip() {
        let (a, b, c) = (
            UserId::new_random(),
            UserId::new_random(),
            ChannelId::new_random(),
        );
        let k = triple(a.as_bytes(), b.as_bytes(), c.as_bytes());
        assert_eq!(&k[..16], a.as_bytes());
        assert_eq!(triple_tail(&k).unwrap(), (*b.as_bytes(), *c.as_bytes()));
        assert!(triple_tail(&k[..47]).is_err());
        let s = session(a, u64::MAX - 3);
        assert_eq!(parse_session(&s).unwrap(), u64::MAX - 3);
        assert!(session(a, 1) < session(a, 256), "sessions sort numerically");
    }

    #[test]
    fn pair_keys_round_trip() {
        let a = UserId::new_random();
        let b = UserId::new_random();
        let k = pair(a.as_bytes(), b.as_bytes());
        assert_eq!(&k[..16], a.as_bytes());
        assert_eq!(UserId::from_bytes(pair_second(&k).unwrap()), b);
        assert!(pair_second(&k[..31]).is_err());
    }
}
