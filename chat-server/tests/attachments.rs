//! Attachments through the real server and the real SDK: upload, a send
//! that references uploads, live delivery, sync on a new device and
//! history with the references, downloads by members and thumbnails, and
//! the refusals (non-members, another's upload, reuse in another channel,
//! oversize with and without a Content-Length, wrong and disallowed
//! types, images that do not decode). Uploads go to a file-system blob
//! store; the storage is the test storage (`CHAT_TEST_STORAGE`: memory by
//! default, PostgreSQL in CI's second pass).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Cursor;
use std::sync::Arc;

use chat_client::{ClientEvent, ErrorCode, HistoryQuery, Session};
use chat_server::{ChatServer, ServerConfig};
use chat_store::blobs::FsBlobStore;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest upload in these tests.
const MAX: u64 = 256 << 10;

/// A server with a file-system blob store in `dir`, on the test storage.
async fn start_with_blobs(dir: &std::path::Path) -> TestServer {
    let config = ServerConfig {
        max_attachment_bytes: MAX,
        ..test_config()
    };
    let blobs = Arc::new(FsBlobStore::open(dir).unwrap());
    match std::env::var("CHAT_TEST_STORAGE").as_deref() {
        #[cfg(feature = "postgres")]
        Ok("postgres") => {
            let schema = PgSchema::new();
            let store = schema.store(&pg_url()).await;
            let mut ts = start_with(
                ChatServer::builder(config)
                    .storage(Arc::new(store))
                    .blobs(blobs),
            )
            .await;
            ts.schema = Some(schema);
            ts
        }
        _ => start_with(ChatServer::builder(config).blobs(blobs)).await,
    }
}

/// A `width` x `height` PNG or JPEG of a gradient.
fn image(width: u32, height: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// An upload over a raw connection with a chunked body (no
/// Content-Length): the status line of the answer.
async fn chunked_upload(ts: &TestServer, session: &Session, chunks: usize) -> String {
    let token = session.access_token().await.unwrap();
    let mut conn = tokio::net::TcpStream::connect(ts.addr).await.unwrap();
    let head = format!(
        "POST /v1/attachments?name=big.txt HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        ts.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 << 10];
    for _ in 0..chunks {
        let sent = async {
            conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .await?;
            conn.write_all(&chunk).await?;
            conn.write_all(b"\r\n").await
        };
        // The server may answer and close before the whole body is sent.
        if sent.await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_uploaded_shared_with_members_and_refused_to_others() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start_with_blobs(dir.path()).await;
    let alice = signup_open(&ts, "alice").await;
    let bob = signup_open(&ts, "bob").await;
    let carol = signup_open(&ts, "carol").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let with_carol = alice.open_direct(carol.user_id()).await.unwrap();

    // Uploads: an image (dimensions, thumbnail) and a text file.
    let png = image(640, 480, image::ImageFormat::Png);
    let photo = alice
        .upload("view.png", "image/png", png.clone())
        .await
        .unwrap();
    assert_eq!(
        (photo.name.as_str(), photo.size, photo.content_type.as_str()),
        ("view.png", png.len() as u64, "image/png")
    );
    assert_eq!((photo.width, photo.height), (Some(640), Some(480)));
    let notes = alice
        .upload(
            "notes – v2.txt",
            "text/plain; charset=utf-8",
            &b"remember the milk"[..],
        )
        .await
        .unwrap();
    assert_eq!(notes.content_type, "text/plain", "parameters are dropped");
    assert_eq!((notes.width, notes.height), (None, None));
    let jpeg = image(100, 50, image::ImageFormat::Jpeg);
    let snap = alice.upload("snap.jpg", "image/jpeg", jpeg).await.unwrap();
    assert_eq!((snap.width, snap.height), (Some(100), Some(50)));

    // Before it is shared, only the uploader reads it.
    assert_eq!(alice.download(photo.id, MAX).await.unwrap(), png);
    assert_eq!(
        api_code(bob.download(photo.id, MAX).await),
        ErrorCode::NotFound
    );

    // Sent with a message: Bob gets the references live.
    let a = connect_synced(&alice).await;
    let mut b = connect_synced(&bob).await;
    let sent = a
        .send_with_attachments(
            direct.id,
            "the view, and my notes",
            vec![photo.id, notes.id],
        )
        .await
        .unwrap();
    let ClientEvent::Message(d) = next_event(
        &mut b,
        |e| matches!(e, ClientEvent::Message(d) if d.message.id == sent.message_id),
    )
    .await
    else {
        unreachable!()
    };
    assert_eq!(d.message.attachments, vec![photo.clone(), notes.clone()]);

    // Bob, a member now, downloads the file and its thumbnail.
    assert_eq!(bob.download(photo.id, MAX).await.unwrap(), png);
    assert_eq!(
        bob.download(notes.id, MAX).await.unwrap(),
        b"remember the milk".to_vec()
    );
    let thumb = bob.download_thumbnail(photo.id).await.unwrap();
    let thumb = image::load_from_memory_with_format(&thumb, image::ImageFormat::Png).unwrap();
    assert_eq!(
        (thumb.width(), thumb.height()),
        (320, 240),
        "a thumbnail of 320 a side at most"
    );
    assert_eq!(
        api_code(bob.download_thumbnail(notes.id).await),
        ErrorCode::NotFound,
        "a text file has no thumbnail"
    );
    assert_eq!(
        api_code(bob.download(photo.id, 1_000).await),
        ErrorCode::LimitExceeded,
        "the SDK stops at its own limit"
    );

    // Carol is no member: the same answer as for no such attachment.
    assert_eq!(
        api_code(carol.download(photo.id, MAX).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        api_code(carol.download_thumbnail(photo.id).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        api_code(
            carol
                .download(chat_client::AttachmentId::new_random(), MAX)
                .await
        ),
        ErrorCode::NotFound
    );

    // Nobody references another's upload, and a shared file stays in its
    // channel.
    let bobs = bob
        .upload("bob.txt", "text/plain", &b"bob's"[..])
        .await
        .unwrap();
    assert_eq!(
        api_code(
            a.send_with_attachments(direct.id, "mine now", vec![bobs.id])
                .await
        ),
        ErrorCode::NotFound
    );
    assert_eq!(
        api_code(
            a.send_with_attachments(with_carol.id, "again", vec![photo.id])
                .await
        ),
        ErrorCode::Conflict
    );
    let c = connect_synced(&carol).await;
    let carols = carol
        .upload("c.txt", "text/plain", &b"c"[..])
        .await
        .unwrap();
    assert_eq!(
        api_code(
            c.send_with_attachments(direct.id, "let me in", vec![carols.id])
                .await
        ),
        ErrorCode::NotFound,
        "a non-member cannot send there"
    );
    assert_eq!(
        api_code(
            a.send_with_attachments(direct.id, "twice", vec![snap.id, snap.id])
                .await
        ),
        ErrorCode::InvalidInput
    );
    // A file alone, without text, is a message too.
    let only_file = a
        .send_with_attachments(direct.id, "", vec![snap.id])
        .await
        .unwrap();

    // A device that connects later finds the references by sync, and
    // history carries them.
    let mut b2 = connect_new(&bob, Default::default()).await;
    let mut synced = Vec::new();
    while synced.len() < 2 {
        if let ClientEvent::Message(d) =
            next_event(&mut b2, |e| matches!(e, ClientEvent::Message(_))).await
        {
            synced.push((d.message.id, d.message.attachments.len()));
        }
    }
    assert_eq!(
        synced,
        vec![(sent.message_id, 2), (only_file.message_id, 1)]
    );
    let page = bob
        .history(direct.id, &HistoryQuery::default())
        .await
        .unwrap();
    let kept: Vec<_> = page
        .messages
        .iter()
        .map(|m| (m.id, m.attachments.iter().map(|a| a.id).collect::<Vec<_>>()))
        .collect();
    assert_eq!(
        kept,
        vec![
            (sent.message_id, vec![photo.id, notes.id]),
            (only_file.message_id, vec![snap.id])
        ]
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_over_the_limit_of_a_wrong_type_or_undecodable_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ts = start_with_blobs(dir.path()).await;
    let alice = signup_open(&ts, "alice").await;
    let files_before = std::fs::read_dir(dir.path()).unwrap().count();

    // Over the limit, with a Content-Length: refused at once.
    let big = vec![b'x'; MAX as usize + 1];
    assert_eq!(
        api_code(alice.upload("big.txt", "text/plain", big).await),
        ErrorCode::AttachmentTooLarge
    );
    // Exactly at the limit: taken.
    alice
        .upload("max.txt", "text/plain", vec![b'x'; MAX as usize])
        .await
        .unwrap();
    // Over the limit without one (chunked): refused while streaming.
    let status = chunked_upload(&ts, &alice, 8).await;
    assert!(status.contains(" 413 "), "{status}");
    let status = chunked_upload(&ts, &alice, 2).await;
    assert!(
        status.contains(" 201 "),
        "a small chunked upload is taken: {status}"
    );

    // A type the server does not take, none at all, bytes that are not the
    // image type they claim, and an image that does not decode.
    assert_eq!(
        api_code(
            alice
                .upload("run.exe", "application/x-msdownload", &b"MZ"[..])
                .await
        ),
        ErrorCode::UnsupportedMediaType
    );
    assert_eq!(
        api_code(
            alice
                .upload("fake.png", "image/png", &b"not a png at all"[..])
                .await
        ),
        ErrorCode::UnsupportedMediaType
    );
    let jpeg = image(10, 10, image::ImageFormat::Jpeg);
    assert_eq!(
        api_code(alice.upload("fake.png", "image/png", jpeg.clone()).await),
        ErrorCode::UnsupportedMediaType,
        "a JPEG is not a PNG"
    );
    let mut broken = image(64, 64, image::ImageFormat::Png);
    broken.truncate(60);
    assert_eq!(
        api_code(alice.upload("broken.png", "image/png", broken).await),
        ErrorCode::UnsupportedMediaType
    );
    assert_eq!(
        api_code(alice.upload("a/b.txt", "text/plain", &b"x"[..]).await),
        ErrorCode::InvalidInput,
        "a name with a path separator"
    );
    // Without a Content-Type header at all.
    let token = alice.access_token().await.unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/attachments?name=x", ts.http))
        .bearer_auth(token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);

    // Of all of that, the two uploads taken are the only files kept.
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .collect();
    assert_eq!(
        files.len(),
        2,
        "refused uploads leave nothing ({files_before} entries before)"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
        0,
        "nor any partial file"
    );
}
