//! The embedded store: the conformance suite, reopening, crashes of a child
//! process, and concurrent appends.

#![cfg(feature = "embedded")]
// Test helpers outside `#[test]` functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use chat_core::{
    Appended, ChannelId, ClientMsgId, DeviceId, Error, HistoryStore, Inbox, Message, MessageId,
    Page, UserId, MAX_PAGE,
};
use chat_store::conformance::{self, DurabilityProbe};
use chat_store::embedded::EmbeddedStore;
use serde::{Deserialize, Serialize};

/// Which child-process role to play (a test name), and where the store is.
const CHILD_ROLE: &str = "CHAT_STORE_TEST_CHILD_ROLE";
const CHILD_DIR: &str = "CHAT_STORE_TEST_CHILD_DIR";

/// The store directory if this process is the child of test `name`.
fn child_dir(name: &str) -> Option<std::path::PathBuf> {
    if std::env::var(CHILD_ROLE).ok()? != name {
        return None;
    }
    std::env::var_os(CHILD_DIR).map(Into::into)
}

/// Re-executes this test binary to run only test `name`, as its child.
fn spawn_child(name: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, name)
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Prints one protocol line to the parent and flushes it. The line starts
/// with a newline: libtest leaves its "test name ... " line open.
fn tell_parent(tag: &str, value: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{tag} {}", serde_json::to_string(value).unwrap()).unwrap();
    out.flush().unwrap();
}

/// The values of the child's lines tagged `tag` (other output is libtest's).
fn parse_lines<T: for<'de> Deserialize<'de>>(lines: &[String], tag: &str) -> Vec<T> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix(tag)?.strip_prefix(' '))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_passes_the_conformance_suite_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        conformance::run_all(&store, &store, &store).await;
        // Again on the same data: every check uses fresh ids.
        conformance::run_all(&store, &store, &store).await;
    }
    // And again after a reopen, on a store full of earlier runs.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    conformance::run_all(&store, &store, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acknowledged_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for probe in &probes {
            conformance::durability_check_read(&store, &store, &store, probe).await;
        }
        probes.push(conformance::durability_check_write(&store, &store, &store).await);
        drop(store);
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for probe in &probes {
        conformance::durability_check_read(&store, &store, &store, probe).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let clone = store.clone();
    let probe = conformance::durability_check_write(&store, &store, &store).await;
    conformance::durability_check_read(&clone, &clone, &clone, &probe).await;
    assert_eq!(clone.path(), dir.path());
    assert!(format!("{store:?}").contains("EmbeddedStore"));
}

/// A child process writes through the store and exits with
/// `std::process::exit`, closing nothing; the parent reopens the directory
/// and finds everything the child had acknowledged. Twice, so the second
/// child also recovers the first one's journal.
#[test]
fn acknowledged_writes_survive_process_exit_without_close() {
    const NAME: &str = "acknowledged_writes_survive_process_exit_without_close";
    if let Some(dir) = child_dir(NAME) {
        runtime().block_on(async {
            let store = EmbeddedStore::open(&dir).unwrap();
            let probe = conformance::durability_check_write(&store, &store, &store).await;
            tell_parent("PROBE", &probe);
            // No drop, no flush, no graceful close of any kind.
            std::process::exit(0);
        })
    }

    let dir = tempfile::tempdir().unwrap();
    let mut probes: Vec<DurabilityProbe> = Vec::new();
    for _ in 0..2 {
        let output = spawn_child(NAME, dir.path()).wait_with_output().unwrap();
        assert!(output.status.success(), "child failed: {:?}", output.status);
        let lines: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        let mut probe: Vec<DurabilityProbe> = parse_lines(&lines, "PROBE");
        assert_eq!(probe.len(), 1, "child output: {lines:?}");
        probes.append(&mut probe);
    }
    runtime().block_on(async {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for probe in &probes {
            assert!(probe.message_count() > 0);
            conformance::durability_check_read(&store, &store, &store, probe).await;
        }
    });
}

/// The child's first line: whose inbox and cursor it writes.
#[derive(Debug, Serialize, Deserialize)]
struct CrashSetup {
    channel: ChannelId,
    reader: UserId,
    device: DeviceId,
}

/// A child process appends, pushes and advances a cursor in a loop,
/// telling the parent after each acknowledged step; the parent kills it
/// with SIGKILL mid-stream, reopens the directory, and finds every
/// acknowledged message (in history, with its idempotency record, and in
/// the inbox) and a cursor at least at the last acknowledged id. At most
/// the one operation in flight at the kill may have left more.
#[test]
fn acknowledged_writes_survive_sigkill() {
    const NAME: &str = "acknowledged_writes_survive_sigkill";
    const ACKS_BEFORE_KILL: usize = 100;
    if let Some(dir) = child_dir(NAME) {
        runtime().block_on(async {
            let store = EmbeddedStore::open(&dir).unwrap();
            let setup = CrashSetup {
                channel: ChannelId::new_random(),
                reader: UserId::new_random(),
                device: DeviceId::new_random(),
            };
            tell_parent("SETUP", &setup);
            let sender = UserId::new_random();
            for k in 1u64.. {
                let m = Message {
                    id: MessageId(k),
                    channel_id: setup.channel,
                    sender,
                    content: format!("message {k}"),
                    created_at: k,
                    client_msg_id: ClientMsgId::new_random(),
                };
                store.append(m.clone()).await.unwrap();
                store.push(&[setup.reader], &m).await.unwrap();
                store
                    .advance_cursor(setup.reader, setup.device, m.id)
                    .await
                    .unwrap();
                tell_parent("ACK", &m);
            }
        });
        std::process::exit(0);
    }

    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(NAME, dir.path());
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut acks = 0;
    while acks < ACKS_BEFORE_KILL {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("child ended early: {:?}", child.wait());
        }
        if line.starts_with("ACK ") {
            acks += 1;
        }
        lines.push(line.trim_end().to_owned());
    }
    child.kill().unwrap(); // SIGKILL on Unix: no chance to clean up.
    child.wait().unwrap();
    // Lines written before the kill were acknowledged too.
    lines.extend(reader.lines().map(Result::unwrap));

    let setup: Vec<CrashSetup> = parse_lines(&lines, "SETUP");
    let setup = &setup[0];
    let acked: Vec<Message> = parse_lines(&lines, "ACK");
    assert!(acked.len() >= ACKS_BEFORE_KILL);
    let last = acked.last().unwrap().id;

    runtime().block_on(async {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let history = store
            .page(setup.channel, Page::latest(MAX_PAGE))
            .await
            .unwrap();
        assert!(
            history.len() == acked.len() || history.len() == acked.len() + 1,
            "{} acknowledged, {} stored",
            acked.len(),
            history.len()
        );
        assert_eq!(&history[..acked.len()], &acked[..], "acknowledged history");
        let inbox = store
            .read(setup.reader, MessageId::ZERO, MAX_PAGE)
            .await
            .unwrap();
        assert!(inbox.len() == acked.len() || inbox.len() == acked.len() + 1);
        assert_eq!(
            &inbox[..acked.len()],
            &acked[..],
            "acknowledged inbox entries"
        );
        let cursor = store.cursor(setup.reader, setup.device).await.unwrap();
        assert!(cursor >= last, "cursor {cursor} < last acknowledged {last}");
        for m in &acked {
            let mut retry = m.clone();
            retry.id = MessageId(m.id.0 + 1_000_000);
            assert_eq!(
                store.append(retry).await.unwrap(),
                Appended::Duplicate(m.clone()),
                "the idempotency record of an acknowledged message survives"
            );
        }
    });
}

/// Many tasks on a multi-threaded runtime append one client message id at
/// once: exactly one is stored, every other gets it back as a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_with_one_client_msg_id_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    for round in 0..5u64 {
        let channel = ChannelId::new_random();
        let template = Message {
            id: MessageId(0),
            channel_id: channel,
            sender: UserId::new_random(),
            content: format!("round {round}"),
            created_at: round,
            client_msg_id: ClientMsgId::new_random(),
        };
        let mut tasks = tokio::task::JoinSet::new();
        for k in 1..=64u64 {
            let store = store.clone();
            let mut m = template.clone();
            m.id = MessageId(k);
            tasks.spawn(async move { store.append(m).await.unwrap() });
        }
        let results = tasks.join_all().await;
        let stored: Vec<&Message> = results
            .iter()
            .filter(|r| !r.is_duplicate())
            .map(Appended::message)
            .collect();
        assert_eq!(stored.len(), 1, "exactly one Stored in round {round}");
        assert!(results.iter().all(|r| r.message() == stored[0]));
        assert_eq!(
            store.page(channel, Page::latest(100)).await.unwrap(),
            vec![stored[0].clone()]
        );
    }
    // The same through the shared suite, on this runtime.
    conformance::concurrency_suite(&*store, &*store, &*store).await;
}

#[test]
fn opening_a_file_is_a_backend_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let err = EmbeddedStore::open(&file).unwrap_err();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
}

#[test]
fn a_store_of_another_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let meta = keyspace
            .open_partition("meta", fjall::PartitionCreateOptions::default())
            .unwrap();
        meta.insert("format", "999").unwrap();
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let err = EmbeddedStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, Error::Backend { .. }) && err.to_string().contains("format"),
        "{err}"
    );
}

#[tokio::test]
async fn a_format_1_store_is_upgraded_and_keeps_its_idempotency_records() {
    use chat_core::{Appended, ChannelId, ClientMsgId, HistoryStore, Message, MessageId};
    let dir = tempfile::tempdir().unwrap();
    let original = Message {
        id: MessageId(1 << 40),
        channel_id: ChannelId::new_random(),
        sender: UserId::new_random(),
        content: "written by format 1".into(),
        created_at: 1_700_000_000_000,
        client_msg_id: ClientMsgId::new("c-1").unwrap(),
    };
    {
        // Format 1, by hand: the message, and its idempotency record keyed
        // `sender ++ client_msg_id` in the old partition.
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let open = |name: &str| {
            keyspace
                .open_partition(name, fjall::PartitionCreateOptions::default())
                .unwrap()
        };
        let (meta, history, idem) = (open("meta"), open("history"), open("idempotency"));
        let location: Vec<u8> = [
            original.channel_id.as_bytes().as_slice(),
            &original.id.to_be_bytes(),
        ]
        .concat();
        history
            .insert(&location, serde_json::to_vec(&original).unwrap())
            .unwrap();
        let old_key: Vec<u8> = [original.sender.as_bytes().as_slice(), b"c-1"].concat();
        idem.insert(old_key, &location).unwrap();
        meta.insert("format", "1").unwrap();
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    for _ in 0..2 {
        // Upgraded at the first open; the second finds format 2.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut retry = original.clone();
        retry.id = MessageId(1 << 41);
        assert_eq!(
            store.append(retry).await.unwrap(),
            Appended::Duplicate(original.clone())
        );
    }
}

#[tokio::test]
async fn an_oversized_username_is_refused_and_the_store_stays_usable() {
    use chat_core::{Directory, Profile, User, UserRecord};
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let huge = "x".repeat(70_000);
    let record = UserRecord {
        user: User {
            id: UserId::new_random(),
            username: huge.clone(),
            profile: Profile::default(),
            created_at: 0,
        },
        password_hash: "hash".into(),
    };
    let err = store.create_user(record).await.unwrap_err();
    assert!(matches!(err, Error::InvalidInput { .. }), "{err:?}");
    assert_eq!(store.user_by_name(&huge).await.unwrap(), None);
    let probe = conformance::durability_check_write(&store, &store, &store).await;
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    conformance::durability_check_read(&store, &store, &store, &probe).await;
}
