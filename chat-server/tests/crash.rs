//! `kill -9` of the real server binary under load, twenty times, on the
//! embedded store and on PostgreSQL. The clients are the real SDK: senders
//! retry their sends across the restarts with the same client message ids,
//! and every device reconnects and syncs by itself. After the last restart:
//!
//! * every acknowledged message reached every member device exactly once
//!   (the sending device excepted, which has its receipt), and each device
//!   saw each channel's messages in id order;
//! * no message is in a channel's history without being in every member's
//!   inbox, nor in an inbox without being in history, and every inbox's
//!   positions run 1, 2, 3, ... with no gap.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, MemoryCursorStore, Session,
};
use chat_core::api::HistoryQuery;
use chat_core::protocol::{ReplyBody, Request};
use chat_core::{Channel, ChannelId, DeviceId, MessageId, Seq};
use common::raw_connect_to;

const KILLS: usize = 20;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The binary with its storage flags, restartable on the same port.
struct Binary {
    port: u16,
    data: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Binary {
    fn new(extra: Vec<String>) -> Self {
        Self {
            port: free_port(),
            data: tempfile::tempdir().unwrap(),
            extra,
            child: None,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--data-dir")
            .arg(self.data.path())
            // The load is a handful of users sending as fast as acks come.
            .args(["--rate-limit", "100000", "--rate-burst", "100000"])
            .args(&self.extra)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(r) = client.get(format!("{}/healthz", self.base())).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the server never became healthy");
    }

    /// SIGKILL: no shutdown, no flush, nothing.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        self.kill();
    }
}

fn options() -> ConnectOptions {
    ConnectOptions {
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(300),
        request_timeout: Duration::from_secs(5),
        send_deadline: Duration::from_secs(120),
        ..ConnectOptions::default()
    }
}

/// What one device showed: `(channel, id, content)` in arrival order.
type Shown = Arc<Mutex<Vec<(ChannelId, MessageId, String)>>>;

/// Reads a connection's events for the whole test.
fn collect(mut conn: Connection) -> (Shown, tokio::task::JoinHandle<Connection>) {
    let shown: Shown = Arc::default();
    let out = shown.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = conn.next_event().await {
            match event {
                ClientEvent::Message(d) => {
                    let m = d.message;
                    out.lock().unwrap().push((m.channel_id, m.id, m.content));
                }
                ClientEvent::Error(e) if !e.is_retryable() => panic!("fatal: {e:?}"),
                _ => {}
            }
            if conn.is_closed() {
                break;
            }
        }
        conn
    });
    (shown, task)
}

async fn crash_scenario(extra: Vec<String>) {
    let mut server = Binary::new(extra);
    server.start().await;
    let http = ChatClient::new(&server.base()).unwrap();
    let mut sessions: Vec<Session> = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        let s = http.signup(name, "crash-password", None).await.unwrap();
        // This test is about delivery, not consent: anyone may add them.
        s.update_privacy(&common::open_to_everyone()).await.unwrap();
        sessions.push(s);
    }
    let id = |i: usize| sessions[i].user_id();
    let ab = sessions[0].open_direct(id(1)).await.unwrap();
    let cd = sessions[2].open_direct(id(3)).await.unwrap();
    let group = sessions[0]
        .create_group("all", &[id(1), id(2), id(3)])
        .await
        .unwrap()
        .channel;
    let channels: Vec<Channel> = vec![ab, cd, group];

    // Every user has a device that sends and shows; Bob has a second one
    // that only shows.
    let mut devices: Vec<(usize, Shown, tokio::task::JoinHandle<Connection>)> = Vec::new();
    let mut senders = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let conn = s
            .connect(
                DeviceId::new_random(),
                Arc::new(MemoryCursorStore::new()),
                options(),
            )
            .await
            .unwrap();
        senders.push(conn.handle());
        let (shown, task) = collect(conn);
        devices.push((i, shown, task));
    }
    let second = sessions[1]
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            options(),
        )
        .await
        .unwrap();
    let (shown, task) = collect(second);
    devices.push((1, shown, task));

    // Load: each user sends to each of their channels in turn.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, handle) in senders.iter().enumerate() {
        let mine: Vec<ChannelId> = channels
            .iter()
            .filter(|c| c.is_member(id(i)))
            .map(|c| c.id)
            .collect();
        let (handle, stop) = (handle.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for k in 0u64.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let channel = mine[k as usize % mine.len()];
                let content = format!("user {i} message {k}");
                let receipt = handle
                    .send(channel, content.clone())
                    .await
                    .unwrap_or_else(|e| panic!("send {content}: {e:?}"));
                acked.push((channel, receipt.message_id, content));
            }
            acked
        }));
    }

    for round in 0..KILLS {
        // A different stretch of load each time: 60 to 250 ms.
        tokio::time::sleep(Duration::from_millis(60 + (round as u64 * 97) % 190)).await;
        server.kill();
        server.start().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked: Vec<(usize, ChannelId, MessageId, String)> = Vec::new();
    for (i, task) in load.into_iter().enumerate() {
        for (c, m, text) in task.await.unwrap() {
            acked.push((i, c, m, text));
        }
    }
    assert!(
        acked.len() > 40,
        "too little load: {} messages",
        acked.len()
    );

    // Every device ends up showing exactly what it must.
    let sender_device = |device: usize| if device < 4 { Some(device) } else { None };
    for (d, (user, shown, _)) in devices.iter().enumerate() {
        let expected: HashSet<MessageId> = acked
            .iter()
            .filter(|(from, c, _, _)| {
                channels
                    .iter()
                    .any(|ch| ch.id == *c && ch.is_member(id(*user)))
                    && sender_device(d) != Some(*from)
            })
            .map(|(_, _, m, _)| *m)
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let got: HashSet<MessageId> =
                shown.lock().unwrap().iter().map(|(_, m, _)| *m).collect();
            if expected.is_subset(&got) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "device {d}: {} of {} acknowledged messages shown",
                expected.intersection(&got).count(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shown = shown.lock().unwrap().clone();
        let mut seen = HashSet::new();
        for (_, m, text) in &shown {
            assert!(
                seen.insert(*m),
                "device {d} showed {text} twice (or two messages share an id)"
            );
        }
        for channel in &channels {
            let ids: Vec<MessageId> = shown
                .iter()
                .filter(|(c, _, _)| *c == channel.id)
                .map(|(_, m, _)| *m)
                .collect();
            assert!(
                ids.windows(2).all(|w| w[0] < w[1]),
                "device {d} showed a channel's messages out of id order"
            );
        }
        // Nothing but acknowledged messages (every send was retried to its ack).
        let acked_ids: HashSet<MessageId> = acked.iter().map(|(_, _, m, _)| *m).collect();
        assert!(
            seen.is_subset(&acked_ids),
            "device {d} showed a message never acknowledged"
        );
    }
    for (_, _, task) in devices {
        task.abort();
    }

    // History and inboxes agree, message for message.
    let ws_url = format!("ws://127.0.0.1:{}/v1/ws", server.port);
    let mut history: HashMap<ChannelId, Vec<MessageId>> = HashMap::new();
    for channel in &channels {
        let member = sessions
            .iter()
            .find(|s| channel.is_member(s.user_id()))
            .unwrap();
        let mut all: Vec<MessageId> = Vec::new();
        loop {
            let page = member
                .history(
                    channel.id,
                    &HistoryQuery {
                        after: Some(all.last().copied().unwrap_or(MessageId::ZERO)),
                        limit: Some(1_000),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            all.extend(page.messages.iter().map(|m| m.id));
            if !page.has_more {
                break;
            }
        }
        history.insert(channel.id, all);
    }
    for s in &sessions {
        let mut raw = raw_connect_to(&ws_url, &s.token(), DeviceId::new_random()).await;
        let mut inbox: BTreeMap<Seq, (ChannelId, MessageId)> = BTreeMap::new();
        let mut after = Seq::ZERO;
        loop {
            let r = raw
                .request(Request::Sync {
                    after: Some(after),
                    limit: Some(1_000),
                })
                .await;
            let Ok(ReplyBody::Synced { entries, has_more }) = r.into_result() else {
                panic!("sync failed")
            };
            for e in &entries {
                inbox.insert(e.seq, (e.message.channel_id, e.message.id));
                after = e.seq;
            }
            if !has_more {
                break;
            }
        }
        let positions: Vec<u64> = inbox.keys().map(|s| s.0).collect();
        assert_eq!(
            positions,
            (1..=inbox.len() as u64).collect::<Vec<_>>(),
            "{}: inbox positions run without a gap",
            s.user_id()
        );
        for channel in channels.iter().filter(|c| c.is_member(s.user_id())) {
            let here: Vec<MessageId> = inbox
                .values()
                .filter(|(c, _)| *c == channel.id)
                .map(|(_, m)| *m)
                .collect();
            assert_eq!(
                &here,
                &history[&channel.id],
                "{}: the inbox holds exactly the channel's history, in order",
                s.user_id()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_on_the_embedded_store() {
    crash_scenario(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_on_postgres() {
    let url = common::pg_url();
    let schema = common::PgSchema::new();
    crash_scenario(vec![
        "--postgres-url".into(),
        url,
        "--postgres-schema".into(),
        schema.name.clone(),
    ])
    .await;
}
