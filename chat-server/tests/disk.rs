//! The real binary on a small disk (a tmpfs mounted for the test): when free
//! space drops below the store's reserve, sends answer `unavailable`
//! (retryable) and store nothing, `/healthz` answers 503; once space is
//! freed the node recovers by itself, and the refused send, retried, is
//! stored once. A full disk never poisons the store.
//!
//! And on a stalled disk (a real ext4 filesystem frozen with `fsfreeze`,
//! so every write to it blocks): sends answer `unavailable` without a
//! thread left behind per send, the node reports itself unhealthy, and it
//! recovers when the disk is thawed, with every message retried stored
//! once and in every inbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_client::ChatClient;
use chat_core::protocol::{ErrorCode, ReplyBody};
use chat_core::DeviceId;
use common::{open_to_everyone, raw_connect_to};

/// A tmpfs of `mb` MiB mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mb: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={mb}m,mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .expect("mount (the tests run as root on the CI machine)");
        assert!(status.success(), "mounting a tmpfs failed: {status}");
        Self { dir }
    }

    fn available(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(self.dir.path())
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// An ext4 filesystem of `mb` MiB in an image file, loop-mounted on a
/// fresh directory; thawed and unmounted on drop.
struct FreezableDisk {
    dir: tempfile::TempDir,
    _image: tempfile::TempDir,
}

impl FreezableDisk {
    fn mount(mb: u64) -> Self {
        let image_dir = tempfile::tempdir().unwrap();
        let image = image_dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(mb << 20)
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let dir = tempfile::tempdir().unwrap();
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap(),
                dir.path().to_str().unwrap(),
            ],
        );
        Self {
            dir,
            _image: image_dir,
        }
    }

    fn freeze(&self) {
        run("fsfreeze", &["-f", self.dir.path().to_str().unwrap()]);
    }

    fn thaw(&self) {
        run("fsfreeze", &["-u", self.dir.path().to_str().unwrap()]);
    }
}

impl Drop for FreezableDisk {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze")
            .arg("-u")
            .arg(self.dir.path())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program} (the tests run as root on the CI machine): {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

/// The server's thread count.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn health(base: &str) -> (u16, String) {
    match reqwest::get(format!("{base}/healthz")).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// The binary on `disk` with a free-space reserve of `reserve_mb`, a
/// conversation between two users, and Alice's raw connection after one
/// message went through.
struct Setup {
    server: Server,
    base: String,
    ws_url: String,
    a: common::Raw,
    alice: chat_client::Session,
    bob: chat_client::Session,
    direct: chat_core::Channel,
}

async fn setup(disk: &SmallDisk, reserve_mb: u64) -> Setup {
    setup_in(
        &disk.dir.path().join("data"),
        &["--disk-reserve-mb", &reserve_mb.to_string()],
    )
    .await
}

async fn setup_in(data: &std::path::Path, flags: &[&str]) -> Setup {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let server = Server(
        Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data)
            .args(flags)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut up = false;
    for _ in 0..200 {
        if health(&base).await.0 == 200 {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(up, "the server did not start");

    let http = ChatClient::new(&base).unwrap();
    let alice = http.signup("alice", "alice-password", None).await.unwrap();
    let bob = http.signup("bob", "bob-password", None).await.unwrap();
    bob.update_privacy(&open_to_everyone()).await.unwrap();
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let ws_url = format!("ws://127.0.0.1:{port}/v1/ws");
    let mut a = raw_connect_to(&ws_url, &alice.token(), DeviceId::new_random()).await;
    let r = a.send_msg(direct.id, "before", "while there is room").await;
    assert!(r.error.is_none(), "{r:?}");
    Setup {
        server,
        base,
        ws_url,
        a,
        alice,
        bob,
        direct,
    }
}

/// Fills `disk` until `leave` bytes are free; returns the filler's path.
fn fill(disk: &SmallDisk, leave: u64) -> std::path::PathBuf {
    let filler = disk.dir.path().join("filler");
    let size = disk.available().saturating_sub(leave);
    std::fs::write(&filler, vec![0u8; size as usize]).unwrap();
    filler
}

/// Retries the send of `key` until it is stored; checks it is stored once,
/// last, and that the node is healthy again. `maybe_stored`: the refused
/// attempt may have reached the disk after all (a journal write that failed
/// part-way is replayed on reopen: "may or may not be stored, retry with the
/// same key"), so the retry may be its duplicate.
async fn recovers(s: &mut Setup, key: &str, maybe_stored: bool) {
    let mut stored = None;
    for _ in 0..200 {
        let r =
            s.a.send_msg(s.direct.id, key, "while the disk is full")
                .await;
        if let Ok(ReplyBody::Sent {
            message_id,
            duplicate,
            ..
        }) = r.into_result()
        {
            assert!(
                maybe_stored || !duplicate,
                "a write refused before it started stored nothing"
            );
            stored = Some(message_id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = stored.expect("sends resume once space is freed");
    let mut healthy = false;
    for _ in 0..200 {
        if health(&s.base).await.0 == 200 {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy, "/healthz recovers");
    // History: the first message, any sends accepted before the store
    // noticed the disk, and the refused one once, last.
    let history = s
        .bob
        .history(s.direct.id, &Default::default())
        .await
        .unwrap();
    let keys: Vec<&str> = history
        .messages
        .iter()
        .map(|m| m.client_msg_id.as_str())
        .collect();
    assert_eq!(keys.first(), Some(&"before"));
    assert_eq!(keys.last(), Some(&key));
    assert_eq!(keys.iter().filter(|k| **k == key).count(), 1);
    assert_eq!(history.messages.last().unwrap().id, id);
}

#[tokio::test]
async fn a_full_disk_refuses_writes_and_the_node_recovers_when_space_is_freed() {
    let disk = SmallDisk::mount(48);
    let mut s = setup(&disk, 16).await;
    // 8 MiB free: below the 16 MiB reserve.
    let filler = fill(&disk, 8 << 20);
    let (a, base, direct) = (&mut s.a, s.base.clone(), s.direct.id);

    // Writes are refused (the store checks its free space at most every
    // half second), retryably, and the node reports itself unhealthy.
    let mut refused = None;
    for k in 0..100 {
        let key = format!("during-{k}");
        let r = a.send_msg(direct, &key, "while the disk is full").await;
        if let Some(e) = r.error {
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
            assert!(e.retryable);
            refused = Some(key);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("a send was refused while the disk was full");
    let (status, body) = health(&base).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage"), "{body}");

    // Space freed: the node recovers by itself; the refused send, retried
    // with its key, is stored (once).
    std::fs::remove_file(&filler).unwrap();
    recovers(&mut s, &refused, false).await;
}

/// With no reserve, a write meets the full disk itself: the journal write
/// fails (ENOSPC), which poisons the store. The node reports it, refuses
/// writes retryably, and once space is freed the store reopens itself
/// (replaying its journal) and takes writes again, with nothing
/// acknowledged lost.
#[tokio::test]
async fn a_failed_journal_write_poisons_the_store_which_reopens_itself() {
    let disk = SmallDisk::mount(48);
    let mut s = setup(&disk, 0).await;
    let filler = fill(&disk, 0);
    let mut refused = None;
    for k in 0..100 {
        let key = format!("during-{k}");
        let r =
            s.a.send_msg(s.direct.id, &key, "while the disk is full")
                .await;
        if let Some(e) = r.error {
            assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
            assert!(e.retryable);
            refused = Some(key);
            break;
        }
    }
    let refused = refused.expect("a send failed on the full disk");
    let (status, body) = health(&s.base).await;
    assert_eq!(status, 503, "{body}");
    std::fs::remove_file(&filler).unwrap();
    recovers(&mut s, &refused, true).await;
}

/// A frozen disk (every write to it blocks until it is thawed): the send
/// whose group is stuck times out, and once the committer has been stuck for
/// the stall threshold every send is refused at once, `unavailable` and
/// retryable, with no thread left behind per send; the node reports itself
/// unhealthy. Thawed, it recovers by itself: every send retried with its key
/// is stored once, and Bob's inbox holds exactly the conversation's history,
/// the write that landed late included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_disk_refuses_sends_without_piling_up_threads_and_recovers() {
    const CONNECTIONS: usize = 8;
    let disk = FreezableDisk::mount(128);
    let data = disk.dir.path().join("data");
    let s = setup_in(
        &data,
        &["--disk-reserve-mb", "1", "--disk-stall-ms", "1000"],
    )
    .await;
    let pid = s.server.0.id();

    // Alice's devices, each sending once before the freeze (so the
    // server's threads for this load exist already).
    let mut devices = Vec::new();
    for i in 0..CONNECTIONS {
        let mut raw = raw_connect_to(&s.ws_url, &s.alice.token(), DeviceId::new_random()).await;
        let r = raw
            .send_msg(s.direct.id, &format!("warm-{i}"), "warm")
            .await;
        assert!(r.error.is_none(), "{r:?}");
        devices.push(raw);
    }
    let before = threads(pid);

    disk.freeze();
    // Every device keeps sending for 8 s: the first sends wait for the
    // stuck group and time out; after the stall threshold the rest are
    // refused at once.
    let until = tokio::time::Instant::now() + Duration::from_secs(8);
    let direct = s.direct.id;
    let mut tasks = Vec::new();
    for (i, mut raw) in devices.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut refused = Vec::new();
            let mut k = 0;
            while tokio::time::Instant::now() < until {
                let key = format!("frozen-{i}-{k}");
                k += 1;
                let r = raw.send_msg(direct, &key, "while the disk is frozen").await;
                match r.error {
                    Some(e) => {
                        assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                        assert!(e.retryable, "{e:?}");
                        refused.push(key);
                    }
                    None => panic!("a send was acknowledged while the disk was frozen: {key}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (raw, refused)
        }));
    }
    let mut peak = before;
    let mut unhealthy = None;
    while tokio::time::Instant::now() < until {
        peak = peak.max(threads(pid));
        if unhealthy.is_none() {
            let (status, body) = health(&s.base).await;
            if status == 503 {
                unhealthy = Some(body);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut refused = Vec::new();
    let mut raws = Vec::new();
    for t in tasks {
        let (raw, keys) = t.await.unwrap();
        raws.push(raw);
        refused.extend(keys);
    }
    let body = unhealthy.expect("/healthz reports the stalled disk");
    assert!(body.contains("not completed a write"), "{body}");
    assert!(
        refused.len() >= 4 * CONNECTIONS,
        "every device kept sending: {} refusals",
        refused.len()
    );
    eprintln!(
        "frozen 8 s: {} sends refused, threads {before} before, {peak} at most",
        refused.len()
    );
    // The committer is stuck in one write; the sends that timed out left
    // nothing behind (an unbounded design parks one thread per send).
    assert!(
        peak <= before + 4,
        "{before} threads before the freeze, {peak} while {} sends were refused",
        refused.len()
    );

    disk.thaw();
    // Retried with their keys, every refused send is stored once (the one
    // whose write was stuck may already be there: a duplicate answer).
    for key in &refused {
        let mut stored = false;
        for _ in 0..200 {
            let r = raws[0]
                .send_msg(direct, key, "while the disk is frozen")
                .await;
            if r.error.is_none() {
                stored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(stored, "{key} is stored once the disk is thawed");
    }
    assert_eq!(health(&s.base).await.0, 200);

    // History holds each key once; Bob's inbox holds exactly that history,
    // at positions without a gap.
    let mut history: Vec<chat_core::Message> = Vec::new();
    loop {
        let page = s
            .bob
            .history(
                direct,
                &chat_core::api::HistoryQuery {
                    after: Some(history.last().map_or(chat_core::MessageId::ZERO, |m| m.id)),
                    limit: Some(1_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        history.extend(page.messages);
        if !page.has_more {
            break;
        }
    }
    let keys: std::collections::HashSet<&str> =
        history.iter().map(|m| m.client_msg_id.as_str()).collect();
    assert_eq!(keys.len(), history.len(), "no key is stored twice");
    for key in &refused {
        assert!(keys.contains(key.as_str()), "{key} is in history");
    }
    let mut bob = raw_connect_to(&s.ws_url, &s.bob.token(), DeviceId::new_random()).await;
    let mut inbox = Vec::new();
    loop {
        let r = bob
            .request(chat_core::protocol::Request::Sync {
                after: inbox.last().map(|(seq, _)| *seq),
                limit: Some(1_000),
            })
            .await;
        let Ok(ReplyBody::Synced { entries, has_more }) = r.into_result() else {
            panic!("sync failed")
        };
        inbox.extend(entries.into_iter().map(|e| (e.seq, e.message.id)));
        if !has_more {
            break;
        }
    }
    let positions: Vec<u64> = inbox.iter().map(|(seq, _)| seq.0).collect();
    assert_eq!(positions, (1..=inbox.len() as u64).collect::<Vec<_>>());
    let ids: Vec<_> = inbox.iter().map(|(_, id)| *id).collect();
    let history_ids: Vec<_> = history.iter().map(|m| m.id).collect();
    assert_eq!(
        ids, history_ids,
        "Bob's inbox is the conversation's history"
    );
    drop(s.a);
}
