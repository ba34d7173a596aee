//! [`Receipts`] for [`EmbeddedStore`]: message numbers and markers.
//!
//! The committer (`group.rs`) writes both: a commit numbers its message
//! (`numbers`: `channel_id ++ message_id` → number) and moves the sender's
//! read marker in the same batch, and a marker moves only through the
//! committer, which keeps the larger of the stored and the given marker.
//! A channel's head is the last key of its `numbers` range, so the channel
//! list reads one key per channel and never history.

use async_trait::async_trait;
use chat_core::receipts::check_receipt_keys;
use chat_core::{
    ChannelId, Marker, MarkerKind, MarkerUpdate, MessageId, Receipt, Receipts, Result, UserId,
};
use fjall::{Keyspace, PartitionHandle};

use super::{db, keys, EmbeddedStore, DURABILITY, FORMAT_VERSION};

/// The partition of message numbers.
pub(super) const NUMBERS: &str = "numbers";

/// The partition of read and delivered markers.
pub(super) const RECEIPTS: &str = "receipts";

fn put(out: &mut [u8], marker: Option<Marker>) {
    if let Some(m) = marker {
        out[..8].copy_from_slice(&m.id.0.to_be_bytes());
        out[8..16].copy_from_slice(&m.number.to_be_bytes());
    }
}

fn get(bytes: &[u8]) -> Option<Marker> {
    let id = u64::from_be_bytes(bytes[..8].try_into().ok()?);
    let number = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
    (number > 0).then_some(Marker {
        id: MessageId(id),
        number,
    })
}

/// A receipt as stored: read then delivered, `id ++ number` each (a
/// number of 0 is no marker).
pub(super) fn encode_receipt(receipt: &Receipt) -> [u8; 32] {
    let mut out = [0u8; 32];
    put(&mut out[..16], receipt.read);
    put(&mut out[16..], receipt.delivered);
    out
}

pub(super) fn decode_receipt(bytes: &[u8]) -> Result<Receipt> {
    if bytes.len() != 32 {
        return Err(keys::corrupt("receipt", "length is not 32 bytes"));
    }
    Ok(Receipt {
        read: get(&bytes[..16]),
        delivered: get(&bytes[16..]),
    })
}

/// The last numbered message of `channel`, from the `numbers` partition.
pub(super) fn head(numbers: &PartitionHandle, channel: ChannelId) -> Result<Option<Marker>> {
    match numbers
        .prefix(channel.as_bytes())
        .next_back()
        .transpose()
        .map_err(db)?
    {
        Some((key, value)) => {
            let (_, id) = keys::parse_id_key(&key, "number key")?;
            let number = keys::parse_message_id(&value, "message number")?.0;
            Ok(Some(Marker { id, number }))
        }
        None => Ok(None),
    }
}

/// Upgrades a format-3 store: every channel's history gets numbers 1, 2,
/// ... in id order, and format 4 is recorded, in one atomic batch (a
/// crash leaves format 3, upgraded again at the next open).
pub(super) fn upgrade_from_format_3(
    keyspace: &Keyspace,
    meta: &PartitionHandle,
    history: &PartitionHandle,
    numbers: &PartitionHandle,
) -> Result<()> {
    let mut batch = keyspace.batch().durability(Some(DURABILITY));
    let mut channel: Option<[u8; 16]> = None;
    let mut number = 0u64;
    let mut messages = 0u64;
    for entry in history.keys() {
        let key = entry.map_err(db)?;
        let (c, _) = keys::parse_id_key(&key, "history key")?;
        if channel != Some(c) {
            channel = Some(c);
            number = 0;
        }
        number += 1;
        messages += 1;
        batch.insert(numbers, key, number.to_be_bytes());
    }
    batch.insert(meta, "format", FORMAT_VERSION);
    batch.commit().map_err(db)?;
    tracing::info!(messages, "embedded store upgraded from format 3 to 4");
    Ok(())
}

#[async_trait]
impl Receipts for EmbeddedStore {
    async fn set_marker(
        &self,
        user: UserId,
        channel: ChannelId,
        kind: MarkerKind,
        message: MessageId,
    ) -> Result<MarkerUpdate> {
        self.inner()?
            .group
            .set_marker(user, channel, kind, message)
            .await
    }

    async fn receipts(&self, keys: &[(UserId, ChannelId)]) -> Result<Vec<Receipt>> {
        check_receipt_keys(keys.len())?;
        let keys = keys.to_vec();
        self.blocking(move |s| {
            keys.iter()
                .map(|(u, c)| {
                    match s
                        .receipts
                        .get(keys::pair(u.as_bytes(), c.as_bytes()))
                        .map_err(db)?
                    {
                        Some(v) => decode_receipt(&v),
                        None => Ok(Receipt::default()),
                    }
                })
                .collect()
        })
        .await
    }

    async fn heads(&self, channels: &[ChannelId]) -> Result<Vec<Option<Marker>>> {
        check_receipt_keys(channels.len())?;
        let channels = channels.to_vec();
        self.blocking(move |s| channels.iter().map(|c| head(&s.numbers, *c)).collect())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_core::{
        Channel, ClientMsgId, Directory, MessageStore, NewMessage, Profile, User, UserRecord,
    };

    /// A store of format 3 (messages without numbers) is numbered when it
    /// is opened: heads, markers and the next commit's number follow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_format_3_store_gets_message_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for (id, name) in [(a, "upgrade_a"), (b, "upgrade_b")] {
            store
                .create_user(UserRecord {
                    user: User {
                        id,
                        username: name.into(),
                        profile: Profile::default(),
                        created_at: 0,
                    },
                    password_hash: "h".into(),
                })
                .await
                .unwrap();
        }
        let channel = store
            .create_channel(Channel::direct(a, b, 0), &chat_core::Limits::default())
            .await
            .unwrap();
        let send = |k: u64| NewMessage {
            id: MessageId(k),
            channel_id: channel.id,
            sender: a,
            content: format!("message {k}"),
            created_at: k,
            client_msg_id: ClientMsgId::new_random(),
            timeout: std::time::Duration::from_secs(30),
            reply_to: None,
            attachments: Vec::new(),
        };
        for k in [10, 20, 30] {
            store.commit(send(k)).await.unwrap();
        }
        drop(store);
        // Back to format 3: no numbers, no receipts.
        {
            let keyspace = fjall::Config::new(dir.path()).open().unwrap();
            let open = |name: &str| {
                keyspace
                    .open_partition(name, fjall::PartitionCreateOptions::default())
                    .unwrap()
            };
            let (meta, numbers, receipts) = (open("meta"), open(NUMBERS), open(RECEIPTS));
            let mut batch = keyspace.batch().durability(Some(DURABILITY));
            for key in numbers.keys() {
                batch.remove(&numbers, key.unwrap());
            }
            for key in receipts.keys() {
                batch.remove(&receipts, key.unwrap());
            }
            batch.insert(&meta, "format", super::super::FORMAT_3);
            batch.commit().unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            store.heads(&[channel.id]).await.unwrap(),
            vec![Some(Marker {
                id: MessageId(30),
                number: 3
            })]
        );
        let up = store
            .set_marker(b, channel.id, MarkerKind::Read, MessageId(20))
            .await
            .unwrap();
        assert_eq!(up.marker.number, 2);
        store.commit(send(40)).await.unwrap();
        let receipt = store.receipts(&[(a, channel.id)]).await.unwrap()[0];
        assert_eq!(
            receipt.read,
            Some(Marker {
                id: MessageId(40),
                number: 4
            }),
            "the next commit takes number 4"
        );
    }

    #[test]
    fn receipts_round_trip() {
        let r = Receipt {
            read: Some(Marker {
                id: MessageId(u64::MAX),
                number: 3,
            }),
            delivered: None,
        };
        assert_eq!(decode_receipt(&encode_receipt(&r)).unwrap(), r);
        assert!(decode_receipt(&[0; 31]).is_err());
    }
}
