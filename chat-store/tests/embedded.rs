//! The embedded store: the conformance suite, reopening, crashes of a child
//! process, and concurrent appends.

#![cfg(feature = "embedded")]
// Test helpers outside `#[test]` functions unwrap too.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chat_core::{
    Appended, Channel, ChannelId, ChannelKind, ClientMsgId, DeviceId, Directory, Error,
    HistoryStore, Inbox, Message, MessageId, MessageStore, NewMessage, Page, Profile, Seq, User,
    UserId, UserRecord, MAX_PAGE,
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
        conformance::run_all(&store, &store).await;
        // Again on the same data: every check uses fresh ids.
        conformance::run_all(&store, &store).await;
    }
    // And again after a reopen, on a store full of earlier runs.
    let store = EmbeddedStore::open(dir.path()).unwrap();
    conformance::run_all(&store, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_search_passes_its_suite_before_and_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        conformance::search_suite(&store, &store, &store).await;
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    conformance::search_suite(&store, &store, &store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_attachments_pass_their_suite_and_survive_reopening() {
    use chat_core::AttachmentStore;
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    conformance::attachment_store_suite(&store).await;
    conformance::attachment_store_suite(&store).await;
    let record = chat_core::AttachmentRecord {
        attachment: chat_core::Attachment {
            id: chat_core::AttachmentId::new_random(),
            name: "kept.pdf".into(),
            size: 10,
            content_type: "application/pdf".into(),
            width: None,
            height: None,
        },
        uploader: chat_core::UserId::new_random(),
        blob: chat_core::BlobId::new_random(),
        thumbnail: None,
        channel: None,
        created_at: 5,
    };
    store.create_attachment(record.clone()).await.unwrap();
    let channel = chat_core::ChannelId::new_random();
    store
        .bind_attachment(record.attachment.id, channel)
        .await
        .unwrap();
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(
        store.attachment(record.attachment.id).await.unwrap(),
        Some(chat_core::AttachmentRecord {
            channel: Some(channel),
            ..record
        }),
        "a record and its binding survive a reopen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_acknowledged_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut probes = Vec::new();
    for _ in 0..3 {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for probe in &probes {
            conformance::durability_check_read(&store, &store, probe).await;
        }
        probes.push(conformance::durability_check_write(&store, &store).await);
        drop(store);
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    for probe in &probes {
        conformance::durability_check_read(&store, &store, probe).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_share_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let clone = store.clone();
    let probe = conformance::durability_check_write(&store, &store).await;
    conformance::durability_check_read(&clone, &clone, &probe).await;
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
            let probe = conformance::durability_check_write(&store, &store).await;
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
            conformance::durability_check_read(&store, &store, probe).await;
        }
    });
}

/// The child's first line: the channels it commits to, with their members,
/// and the cursor it advances.
#[derive(Debug, Serialize, Deserialize)]
struct CrashSetup {
    channels: Vec<Channel>,
    reader: UserId,
    device: DeviceId,
}

/// One acknowledged commit, as the child reports it.
#[derive(Debug, Serialize, Deserialize)]
struct Acked {
    message: Message,
    positions: Vec<(UserId, Seq)>,
}

/// Creates `n` users.
async fn users(store: &EmbeddedStore, n: usize) -> Vec<UserId> {
    let mut out = Vec::new();
    for _ in 0..n {
        let id = UserId::new_random();
        store
            .create_user(UserRecord {
                user: User {
                    id,
                    username: format!("crash_{}", &id.0.simple().to_string()[..20]),
                    profile: Profile::default(),
                    created_at: 0,
                },
                password_hash: "hash".into(),
            })
            .await
            .unwrap();
        out.push(id);
    }
    out
}

/// Every entry of a user's inbox, checking positions are dense.
async fn inbox_of(store: &EmbeddedStore, user: UserId) -> Vec<(Seq, Message)> {
    let mut out: Vec<(Seq, Message)> = Vec::new();
    loop {
        let after = out.last().map_or(Seq::ZERO, |(s, _)| *s);
        let page = store.read(user, after, MAX_PAGE, usize::MAX).await.unwrap();
        for e in page.items {
            assert_eq!(e.seq, Seq(out.len() as u64 + 1), "dense positions");
            out.push((e.seq, e.message));
        }
        if !page.has_more {
            return out;
        }
    }
}

/// A child process commits messages from 8 concurrent tasks into two
/// channels (a direct channel and a 5-member group), advancing a cursor and
/// telling the parent after each acknowledged commit; the parent kills it
/// with SIGKILL mid-stream, reopens the directory, and checks, each of 5
/// rounds on the same directory:
///
/// * every acknowledged message is in history and in every member's inbox,
///   at the positions its commit reported, and its idempotency record
///   answers a retry with them;
/// * atomicity: every message in a channel's history is in each member's
///   inbox, and every inbox entry is in history (in-flight commits at the
///   kill are all there or not at all);
/// * positions are dense, each channel appears in every inbox in id order,
///   and the cursor is at least the last acknowledged value.
#[test]
fn commits_are_atomic_and_acknowledged_ones_survive_sigkill() {
    const NAME: &str = "commits_are_atomic_and_acknowledged_ones_survive_sigkill";
    const ROUNDS: usize = 5;
    if let Some(dir) = child_dir(NAME) {
        runtime().block_on(async {
            let store = Arc::new(EmbeddedStore::open(&dir).unwrap());
            let setup: CrashSetup = match std::fs::read(dir.join("setup.json")) {
                Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
                Err(_) => {
                    let people = users(&store, 5).await;
                    let direct = store
                        .create_channel(
                            Channel::direct(people[0], people[1], 0),
                            &chat_core::Limits::default(),
                        )
                        .await
                        .unwrap();
                    let group = store
                        .create_channel(
                            Channel {
                                id: ChannelId::new_random(),
                                kind: ChannelKind::Group,
                                name: "crash".into(),
                                owner: Some(people[0]),
                                members: people.clone(),
                                created_at: 0,
                            },
                            &chat_core::Limits::default(),
                        )
                        .await
                        .unwrap();
                    let setup = CrashSetup {
                        channels: vec![direct, group],
                        reader: people[1],
                        device: DeviceId::new_random(),
                    };
                    std::fs::write(dir.join("setup.json"), serde_json::to_vec(&setup).unwrap())
                        .unwrap();
                    setup
                }
            };
            let setup = Arc::new(setup);
            let mut tasks = tokio::task::JoinSet::new();
            // One generator for the process, as a server has: ids are taken
            // before the commits, which the tasks race, so some come stale
            // and are proposed again above the channel's last id.
            let ids = Arc::new(chat_core::Snowflake::new(1).unwrap());
            for task in 0..8u64 {
                let (store, setup, ids) = (store.clone(), setup.clone(), ids.clone());
                tasks.spawn(async move {
                    for k in 0u64.. {
                        let channel = &setup.channels[((task + k) % 2) as usize];
                        let sender = channel.members[(k as usize) % channel.members.len()];
                        let mut m = NewMessage {
                            id: ids.generate(),
                            channel_id: channel.id,
                            sender,
                            content: format!("task {task} message {k}"),
                            created_at: k,
                            client_msg_id: ClientMsgId::new_random(),
                            timeout: Duration::from_secs(30),
                            reply_to: None,
                            attachments: Vec::new(),
                        };
                        tokio::task::yield_now().await;
                        let c = loop {
                            match store.commit(m.clone()).await {
                                Err(Error::StaleId { last }) => m.id = ids.generate_after(last),
                                other => break other.unwrap(),
                            }
                        };
                        if let Some(seq) = c.position_of(setup.reader) {
                            store
                                .advance_cursor(setup.reader, setup.device, seq)
                                .await
                                .unwrap();
                        }
                        tell_parent(
                            "ACK",
                            &Acked {
                                message: c.message,
                                positions: c.positions,
                            },
                        );
                    }
                });
            }
            tasks.join_all().await;
        });
        std::process::exit(0);
    }

    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<Acked> = Vec::new();
    for round in 0..ROUNDS {
        let mut child = spawn_child(NAME, dir.path());
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        let mut acks = 0;
        // A different point in the stream each round.
        let kill_after = 50 + 37 * round;
        while acks < kill_after {
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
        acked.extend(parse_lines::<Acked>(&lines, "ACK"));

        let setup: CrashSetup =
            serde_json::from_slice(&std::fs::read(dir.path().join("setup.json")).unwrap()).unwrap();
        runtime().block_on(async {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            let mut inboxes: HashMap<UserId, Vec<(Seq, Message)>> = HashMap::new();
            for channel in &setup.channels {
                for m in &channel.members {
                    if !inboxes.contains_key(m) {
                        inboxes.insert(*m, inbox_of(&store, *m).await);
                    }
                }
            }
            let mut at: BTreeMap<(UserId, Seq), &Message> = BTreeMap::new();
            for (user, entries) in &inboxes {
                for (seq, m) in entries {
                    at.insert((*user, *seq), m);
                }
            }
            for channel in &setup.channels {
                let history = store
                    .page(channel.id, Page::after(MessageId::ZERO, usize::MAX))
                    .await
                    .unwrap()
                    .items;
                for member in &channel.members {
                    let here: Vec<&Message> = inboxes[member]
                        .iter()
                        .filter(|(_, m)| m.channel_id == channel.id)
                        .map(|(_, m)| m)
                        .collect();
                    assert_eq!(
                        here,
                        history.iter().collect::<Vec<_>>(),
                        "round {round}: a member's inbox holds exactly the channel's history, in id order"
                    );
                }
            }
            for a in &acked {
                assert_eq!(
                    store.get(a.message.channel_id, a.message.id).await.unwrap().as_ref(),
                    Some(&a.message),
                    "round {round}: an acknowledged message is in history"
                );
                for (user, seq) in &a.positions {
                    assert_eq!(
                        at.get(&(*user, *seq)).copied(),
                        Some(&a.message),
                        "round {round}: at its acknowledged position"
                    );
                }
            }
            // The idempotency records of the last few acknowledged commits.
            for a in acked.iter().rev().take(20) {
                let retry = store
                    .commit(NewMessage {
                        id: MessageId(1),
                        channel_id: a.message.channel_id,
                        sender: a.message.sender,
                        content: a.message.content.clone(),
                        created_at: 0,
                        client_msg_id: a.message.client_msg_id.clone(),
                        timeout: Duration::from_secs(30),
                        reply_to: None,
                        attachments: Vec::new(),
                    })
                    .await
                    .unwrap();
                assert!(retry.duplicate, "round {round}: the record survives");
                assert_eq!((&retry.message, &retry.positions), (&a.message, &a.positions));
            }
            let last_seen = acked
                .iter()
                .filter_map(|a| {
                    a.positions
                        .iter()
                        .find(|(u, _)| *u == setup.reader)
                        .map(|(_, s)| *s)
                })
                .max()
                .unwrap_or(Seq::ZERO);
            let cursor = store.cursor(setup.reader, setup.device).await.unwrap();
            // Cursor advances are acknowledged before the ACK line.
            assert!(
                cursor >= last_seen || acked.is_empty(),
                "round {round}: cursor {cursor} behind {last_seen}"
            );
        });
    }
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
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            attachments: Vec::new(),
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
            store.page(channel, Page::latest(100)).await.unwrap().items,
            vec![stored[0].clone()]
        );
    }
    // The same through the shared suite, on this runtime.
    conformance::concurrency_suite(&*store, &*store).await;
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
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
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
        // Upgraded at the first open; the second finds format 3.
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut retry = original.clone();
        retry.id = MessageId(1 << 41);
        assert_eq!(
            store.append(retry).await.unwrap(),
            Appended::Duplicate(original.clone())
        );
    }
}

/// A format-2 store (inboxes keyed by message id, cursors as message ids)
/// is upgraded: each user's entries get positions in id order, each cursor
/// the count of entries at or below it.
#[tokio::test]
async fn a_format_2_store_is_upgraded_to_inbox_positions() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    let (phone, laptop) = (DeviceId::new_random(), DeviceId::new_random());
    let channel = ChannelId::new_random();
    let message = |id: u64| Message {
        id: MessageId(id),
        channel_id: channel,
        sender: alice,
        content: format!("format 2, id {id}"),
        created_at: id,
        client_msg_id: ClientMsgId::new_random(),
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
    };
    let ids = [1u64 << 40, (1 << 40) + 7, 1 << 41];
    {
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let open = |name: &str| {
            keyspace
                .open_partition(name, fjall::PartitionCreateOptions::default())
                .unwrap()
        };
        let (meta, inbox, cursors) = (open("meta"), open("inbox"), open("cursors"));
        for user in [alice, bob] {
            for id in ids {
                let key = [user.as_bytes().as_slice(), &id.to_be_bytes()].concat();
                inbox
                    .insert(key, serde_json::to_vec(&message(id)).unwrap())
                    .unwrap();
            }
        }
        let cursor = |user: UserId, device: DeviceId, id: u64| {
            let key = [user.as_bytes().as_slice(), device.as_bytes()].concat();
            cursors.insert(key, id.to_be_bytes()).unwrap();
        };
        cursor(alice, phone, ids[1]); // at the second entry
        cursor(alice, laptop, ids[1] + 1); // between the second and third
        cursor(bob, phone, 5); // before the first
        meta.insert("format", "2").unwrap();
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    for _ in 0..2 {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        for user in [alice, bob] {
            let entries = inbox_of(&store, user).await;
            let got: Vec<(u64, u64)> = entries.iter().map(|(s, m)| (s.0, m.id.0)).collect();
            assert_eq!(
                got,
                vec![(1, ids[0]), (2, ids[1]), (3, ids[2])],
                "positions follow the old id order"
            );
        }
        assert_eq!(store.cursor(alice, phone).await.unwrap(), Seq(2));
        assert_eq!(store.cursor(alice, laptop).await.unwrap(), Seq(2));
        assert_eq!(store.cursor(bob, phone).await.unwrap(), Seq::ZERO);
        // Format 2 wrote history and inboxes in two steps; a message a crash
        // left only in inboxes is in history again.
        for id in ids {
            assert_eq!(
                store
                    .get(channel, MessageId(id))
                    .await
                    .unwrap()
                    .map(|m| m.id),
                Some(MessageId(id))
            );
        }
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
    let probe = conformance::durability_check_write(&store, &store).await;
    drop(store);
    let store = EmbeddedStore::open(dir.path()).unwrap();
    conformance::durability_check_read(&store, &store, &probe).await;
}

/// A store written before the search index existed (no `search` partition,
/// no marker) is indexed when opened: its old messages are found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_a_search_index_is_indexed_at_open() {
    use chat_core::{ChannelId, ClientMsgId, HistoryStore, Message, MessageId, MessageSearch};
    let dir = tempfile::tempdir().unwrap();
    let channel = ChannelId::new_random();
    let old = Message {
        id: MessageId(1 << 40),
        channel_id: channel,
        sender: UserId::new_random(),
        content: "written before the index".into(),
        created_at: 1,
        client_msg_id: ClientMsgId::new_random(),
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
        attachments: Vec::new(),
    };
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.append(old.clone()).await.unwrap();
    }
    {
        // Back to how an older build left it.
        let keyspace = fjall::Config::new(dir.path()).open().unwrap();
        let search = keyspace
            .open_partition("search", fjall::PartitionCreateOptions::default())
            .unwrap();
        keyspace.delete_partition(search).unwrap();
        let meta = keyspace
            .open_partition("meta", fjall::PartitionCreateOptions::default())
            .unwrap();
        meta.remove("search_index").unwrap();
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let found = store.search(&[channel], "index", None, 10).await.unwrap();
        assert_eq!(found.items, vec![old.clone()], "indexed at open");
    }
}
