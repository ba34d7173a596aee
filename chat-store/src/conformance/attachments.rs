//! Conformance of [`BlobStore`] and [`AttachmentStore`], and of the
//! attachments a [`MessageStore`] keeps with its messages.

use bytes::Bytes;
use chat_core::attachment::{bytes_stream, ByteStream};
use chat_core::{
    Attachment, AttachmentId, AttachmentRecord, AttachmentStore, BlobId, BlobStore, ChannelId,
    Directory, Error, MessageStore, UserId,
};
use futures::StreamExt;

use super::messages::{group, new_message, users, whole_history, whole_inbox};
use super::{ok, Ids};

/// Checks every clause of the [`BlobStore`] contract:
///
/// * a put reads back byte for byte, with its size, under a new id each
///   time (also empty blobs, blobs of many chunks, and blobs larger than a
///   multipart part);
/// * a put over `max_bytes` is `LimitExceeded`, at any size (one chunk,
///   within a part, past a part);
/// * a put whose stream fails returns the error;
/// * `get` of an unknown id is `None`; `delete` removes, and is idempotent;
/// * concurrent puts get distinct ids and keep their own bytes.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn blob_store_suite(blobs: &dyn BlobStore) {
    // Round trips, small and large (past one 5 MiB S3 part).
    for size in [0usize, 1, 65_537, (5 << 20) + 123_457] {
        let data = pattern(size);
        let put = ok(blobs.put(bytes_stream(data.clone()), 8 << 20).await, "put");
        assert_eq!(put.size, size as u64, "put reports the size");
        assert_eq!(
            read(blobs, put.id).await,
            Some(data),
            "get returns the bytes ({size})"
        );
    }
    let a = ok(blobs.put(bytes_stream(&b"same"[..]), 100).await, "put");
    let b = ok(blobs.put(bytes_stream(&b"same"[..]), 100).await, "put");
    assert_ne!(a.id, b.id, "every put gets a new id");

    // Exactly at the limit is fine; one byte over is not.
    let at = ok(blobs.put(bytes_stream(pattern(1_000)), 1_000).await, "put");
    assert_eq!(at.size, 1_000);
    for (size, max) in [
        (1_001usize, 1_000u64),
        (6 << 20, (5 << 20) + 10),
        (300_000, 200_000),
    ] {
        let over = blobs.put(bytes_stream(pattern(size)), max).await;
        assert!(
            matches!(over, Err(Error::LimitExceeded { .. })),
            "a put over max_bytes ({size} > {max}) is LimitExceeded: {over:?}"
        );
    }

    // A stream that fails midway: the error comes back.
    let failing: ByteStream = Box::pin(futures::stream::iter(vec![
        Ok(Bytes::from(pattern(10_000))),
        Err(Error::invalid("the client went away")),
    ]));
    let failed = blobs.put(failing, 1 << 20).await;
    assert!(
        matches!(failed, Err(Error::InvalidInput { .. })),
        "a failing stream fails the put with its error: {failed:?}"
    );

    // Unknown ids, deletes.
    assert!(
        ok(blobs.get(BlobId::new_random()).await, "get unknown").is_none(),
        "an unknown id reads as None"
    );
    ok(blobs.delete(a.id).await, "delete");
    assert!(
        ok(blobs.get(a.id).await, "get deleted").is_none(),
        "deleted"
    );
    ok(blobs.delete(a.id).await, "delete again");
    ok(blobs.delete(BlobId::new_random()).await, "delete unknown");
    assert_eq!(
        read(blobs, b.id).await,
        Some(b"same".to_vec()),
        "deleting one blob leaves the other"
    );

    // Concurrent puts.
    let puts = (0..8u8).map(|i| async move {
        let data = vec![i; 10_000 + usize::from(i)];
        let put = ok(blobs.put(bytes_stream(data.clone()), 1 << 20).await, "put");
        (put.id, data)
    });
    let done = futures::future::join_all(puts).await;
    let mut ids: Vec<BlobId> = done.iter().map(|(id, _)| *id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 8, "concurrent puts get distinct ids");
    for (id, data) in done {
        assert_eq!(read(blobs, id).await, Some(data), "each keeps its bytes");
    }
}

/// Checks every clause of the [`AttachmentStore`] contract: create and
/// read back (with and without dimensions and thumbnail), a second create
/// of an id is `AlreadyExists`, bind once (idempotent for the same
/// channel, `Conflict` for another, `NotFound` for an unknown id), and of
/// concurrent binds to different channels exactly one wins.
///
/// # Panics
///
/// On the first contract violation, naming it.
pub async fn attachment_store_suite(store: &dyn AttachmentStore) {
    let uploader = UserId::new_random();
    let image = record(uploader, true);
    ok(store.create_attachment(image.clone()).await, "create");
    assert_eq!(
        ok(store.attachment(image.attachment.id).await, "attachment"),
        Some(image.clone()),
        "a record reads back as created"
    );
    let file = record(uploader, false);
    ok(store.create_attachment(file.clone()).await, "create");
    assert_eq!(
        ok(store.attachment(file.attachment.id).await, "attachment"),
        Some(file.clone()),
        "a record without dimensions or thumbnail reads back as created"
    );
    let again = store.create_attachment(image.clone()).await;
    assert!(
        matches!(again, Err(Error::AlreadyExists { .. })),
        "creating an id twice is AlreadyExists: {again:?}"
    );
    assert!(
        ok(
            store.attachment(AttachmentId::new_random()).await,
            "unknown"
        )
        .is_none(),
        "an unknown id reads as None"
    );

    let (c1, c2) = (ChannelId::new_random(), ChannelId::new_random());
    let unknown = store.bind_attachment(AttachmentId::new_random(), c1).await;
    assert!(
        matches!(unknown, Err(Error::NotFound { .. })),
        "binding an unknown id is NotFound: {unknown:?}"
    );
    let bound = ok(store.bind_attachment(image.attachment.id, c1).await, "bind");
    assert_eq!(bound.channel, Some(c1), "bind sets the channel");
    assert_eq!(
        bound,
        AttachmentRecord {
            channel: Some(c1),
            ..image.clone()
        },
        "and nothing else"
    );
    assert_eq!(
        ok(
            store.bind_attachment(image.attachment.id, c1).await,
            "bind again"
        ),
        bound,
        "binding to the same channel again is a no-op"
    );
    let other = store.bind_attachment(image.attachment.id, c2).await;
    assert!(
        matches!(other, Err(Error::Conflict { .. })),
        "binding to another channel is Conflict: {other:?}"
    );
    assert_eq!(
        ok(store.attachment(image.attachment.id).await, "attachment").and_then(|r| r.channel),
        Some(c1),
        "the first binding stays"
    );

    // Concurrent binds of one record to different channels.
    let raced = record(uploader, false);
    ok(store.create_attachment(raced.clone()).await, "create");
    let channels: Vec<ChannelId> = (0..8).map(|_| ChannelId::new_random()).collect();
    let binds = channels
        .iter()
        .map(|c| store.bind_attachment(raced.attachment.id, *c));
    let outcomes = futures::future::join_all(binds).await;
    let winners: Vec<ChannelId> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().and_then(|r| r.channel))
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent bind wins: {outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|o| o.is_ok() || matches!(o, Err(Error::Conflict { .. }))),
        "the others are Conflict: {outcomes:?}"
    );
    assert_eq!(
        ok(store.attachment(raced.attachment.id).await, "attachment").and_then(|r| r.channel),
        Some(winners[0]),
        "the winner's channel is stored"
    );
}

/// A message's attachments go wherever the message goes: the commit's
/// answer, `get`, pages of history, every member's inbox entry, and
/// [`HistoryStore::append`](chat_core::HistoryStore::append); a message
/// without has none.
pub(super) async fn attachments_are_kept(store: &dyn MessageStore, directory: &dyn Directory) {
    let [a, b] = users::<2>(directory).await;
    let group = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let plain = ok(
        store
            .commit(new_message(group.id, a, ids.at(1), "no files"))
            .await,
        "commit",
    );
    assert!(
        plain.message.attachments.is_empty(),
        "a plain message has none"
    );
    let files = vec![record(a, true).attachment, record(a, false).attachment];
    let mut with = new_message(group.id, a, ids.at(2), "two files");
    with.attachments = files.clone();
    let with = ok(store.commit(with).await, "commit with attachments");
    assert_eq!(with.message.attachments, files, "the commit answers them");
    assert_eq!(
        ok(store.get(group.id, with.message.id).await, "get").map(|m| m.attachments),
        Some(files.clone()),
        "get carries them, in order"
    );
    let history = whole_history(store, group.id).await;
    assert_eq!(
        history
            .iter()
            .map(|m| m.attachments.clone())
            .collect::<Vec<_>>(),
        vec![Vec::new(), files.clone()],
        "history pages carry them (and only on their message)"
    );
    for member in [a, b] {
        let inbox = whole_inbox(store, member).await;
        assert_eq!(
            inbox.last().map(|e| e.message.attachments.clone()),
            Some(files.clone()),
            "every member's inbox entry carries them"
        );
    }
    let mut appended = super::message(group.id, b, ids.at(3), "appended");
    appended.attachments = vec![record(b, true).attachment];
    ok(
        store.append(appended.clone()).await,
        "append with attachments",
    );
    assert_eq!(
        ok(store.get(group.id, appended.id).await, "get"),
        Some(appended),
        "an appended message keeps its attachments"
    );
}

/// An edit keeps a message's attachments (in history and in the change
/// entries); a deletion drops them with the content (a tombstone
/// references no file).
pub(super) async fn attachments_follow_changes(
    store: &dyn MessageStore,
    directory: &dyn Directory,
) {
    let [a, b] = users::<2>(directory).await;
    let group = group(directory, &[a, b]).await;
    let ids = Ids::fresh();
    let files = vec![record(a, true).attachment];
    let mut with = new_message(group.id, a, ids.at(1), "a photo");
    with.attachments = files.clone();
    let sent = ok(store.commit(with).await, "commit with attachments").message;
    let change = |action: chat_core::Action| chat_core::NewChange {
        channel_id: group.id,
        message_id: sent.id,
        actor: a,
        action,
        at: 50,
        timeout: std::time::Duration::from_secs(30),
    };
    let edited = ok(
        store
            .change(change(chat_core::Action::Edit {
                content: "a photo, captioned".into(),
            }))
            .await,
        "edit",
    );
    assert_eq!(edited.message.attachments, files, "an edit keeps the files");
    assert_eq!(
        ok(store.get(group.id, sent.id).await, "get").map(|m| m.attachments),
        Some(files.clone()),
        "history keeps them after an edit"
    );
    let entry = whole_inbox(store, b).await.pop().expect("the change entry");
    assert!(entry.change.is_some(), "the last entry is the edit's");
    assert_eq!(
        entry.message.attachments, files,
        "the change entry carries the files"
    );
    let deleted = ok(
        store.change(change(chat_core::Action::Delete)).await,
        "delete",
    );
    assert!(
        deleted.message.attachments.is_empty(),
        "a tombstone has no files"
    );
    assert_eq!(
        ok(store.get(group.id, sent.id).await, "get").map(|m| m.attachments),
        Some(Vec::new()),
        "history drops them with the content"
    );
    let entry = whole_inbox(store, b).await.pop().expect("the change entry");
    assert!(
        entry.message.attachments.is_empty(),
        "the deletion's entry carries none"
    );
}

/// A fresh record of `uploader`: an image (dimensions and a thumbnail) or
/// a plain file.
fn record(uploader: UserId, image: bool) -> AttachmentRecord {
    let id = AttachmentId::new_random();
    AttachmentRecord {
        attachment: Attachment {
            id,
            name: if image {
                "photo.png"
            } else {
                "notes – final.txt"
            }
            .into(),
            size: if image { 123_456 } else { 7 },
            content_type: if image { "image/png" } else { "text/plain" }.into(),
            width: image.then_some(640),
            height: image.then_some(480),
        },
        uploader,
        blob: BlobId::new_random(),
        thumbnail: image.then(BlobId::new_random),
        channel: None,
        created_at: 1_700_000_000_123,
    }
}

/// `size` bytes that differ from chunk to chunk.
fn pattern(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect()
}

/// The whole blob, checked against its reported size.
async fn read(blobs: &dyn BlobStore, id: BlobId) -> Option<Vec<u8>> {
    let reader = ok(blobs.get(id).await, "get")?;
    let size = reader.size;
    let mut out = Vec::new();
    let mut stream = reader.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&ok(chunk, "get's stream"));
    }
    assert_eq!(out.len() as u64, size, "get reports the size it streams");
    Some(out)
}
