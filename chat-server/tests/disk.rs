//! The real binary on a small disk (a tmpfs mounted for the test): when free
//! space drops below the store's reserve, sends answer `unavailable`
//! (retryable) and store nothing, `/healthz` answers 503; once space is
//! freed the node recovers by itself, and the refused send, retried, is
//! stored once. A full disk never poisons the store.
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
    _server: Server,
    base: String,
    a: common::Raw,
    bob: chat_client::Session,
    direct: chat_core::Channel,
}

async fn setup(disk: &SmallDisk, reserve_mb: u64) -> Setup {
    let data = disk.dir.path().join("data");
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
            .arg(&data)
            .args(["--disk-reserve-mb", &reserve_mb.to_string()])
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
        _server: server,
        base,
        a,
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
