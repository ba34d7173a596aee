//! Many servers, one system: real `chat-server` processes on one PostgreSQL
//! schema, with the NATS bus, Redis presence and etcd discovery, driven by
//! the real client SDK (and a raw WebSocket where a frame itself is the
//! point). Messages reach every device on every node exactly once; a friend
//! on another node sees online and offline once; `route` spreads clients;
//! a taken node id refuses to start; and the engine faults: the bus broker,
//! the presence store and discovery each stopped and restarted (private
//! engine processes, never the shared ones) while clients are connected.
//!
//! Needs PostgreSQL (`CHAT_TEST_PG_URL`), NATS with JetStream
//! (`CHAT_TEST_NATS_URL`), Redis (`CHAT_TEST_REDIS_URL`) and etcd
//! (`CHAT_TEST_ETCD_ENDPOINTS`), and ZooKeeper (`CHAT_TEST_ZOOKEEPER`) as
//! the README lists, and `nats-server`,
//! `redis-server` and `etcd` on `PATH` for the fault tests. Every run uses
//! its own schema and prefixes.
#![cfg(all(
    feature = "postgres",
    feature = "nats",
    feature = "redis",
    feature = "etcd"
))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, MemoryCursorStore, Session,
};
use chat_conformance::engines::{free_port, Engine, Kind};
use chat_core::api::UpdatePrivacyRequest;
use chat_core::protocol::{ClientFrame, Event, Reply, ReplyBody, Request, ServerFrame};
use chat_core::WhoMayAdd;
use chat_core::{ChannelId, ClientMsgId, DeviceId, MessageId, PresenceStatus, UserId};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &str = "cluster-test-token-secret-of-32-bytes!!";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// The engines and names one test's servers share.
struct Cluster {
    run: String,
    pg_url: String,
    nats_url: String,
    redis_url: String,
    etcd: String,
    /// Use ZooKeeper (this connect string) for discovery instead of etcd.
    zookeeper: Option<String>,
    /// Carry live events over Redis pub/sub instead of NATS.
    redis_bus: bool,
    /// node id → HTTP port of the nodes started.
    ports: std::sync::Mutex<HashMap<u16, u16>>,
    /// The token of a user who asks `route` (signed-in users only).
    prober: tokio::sync::OnceCell<String>,
}

/// One `chat-server` process.
struct Node {
    child: Option<Child>,
    base: String,
    server_id: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Node {
    fn client(&self) -> ChatClient {
        ChatClient::new(&self.base).unwrap()
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..400 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().unwrap()
    }
}

impl Cluster {
    fn new() -> Self {
        let run = uuid::Uuid::new_v4().simple().to_string();
        Self {
            pg_url: env_or(
                "CHAT_TEST_PG_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            nats_url: env_or("CHAT_TEST_NATS_URL", "nats://127.0.0.1:4222"),
            redis_url: env_or("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
            etcd: env_or("CHAT_TEST_ETCD_ENDPOINTS", "http://127.0.0.1:2379"),
            zookeeper: None,
            redis_bus: false,
            ports: Default::default(),
            prober: tokio::sync::OnceCell::new(),
            run,
        }
    }

    fn schema(&self) -> String {
        format!("chat_cluster_{}", self.run)
    }

    fn prefix(&self) -> String {
        format!("t{}", &self.run[..16])
    }

    fn command(&self, node_id: u16, port: u16) -> Command {
        self.command_as(node_id, &format!("node{node_id}"), port)
    }

    fn command_as(&self, node_id: u16, server_id: &str, port: u16) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--postgres-url", &self.pg_url])
            .args(["--postgres-schema", &self.schema()])
            .args(["--postgres-pool", "4"])
            .args(["--token-secret", SECRET])
            .args(["--node-id", &node_id.to_string()])
            .args(["--server-id", server_id])
            .args(["--region", &format!("r{node_id}")])
            .args(["--redis-url", &self.redis_url])
            .args(["--redis-prefix", &self.prefix()])
            .args(["--heartbeat-secs", "1"])
            .args(["--presence-timeout-secs", "3"])
            .args(["--discovery-ttl-secs", "3"])
            // Every test user signs up from 127.0.0.1.
            .args(["--auth-per-address-per-minute", "0"]);
        if self.redis_bus {
            cmd.arg("--redis-bus");
        } else {
            cmd.args(["--nats-url", &self.nats_url])
                .args(["--nats-prefix", &self.prefix()]);
        }
        match &self.zookeeper {
            Some(zk) => cmd
                .args(["--zookeeper", zk])
                .args(["--zookeeper-path", &format!("/{}", self.prefix())]),
            None => cmd
                .args(["--etcd-endpoints", &self.etcd])
                .args(["--etcd-prefix", &self.prefix()]),
        };
        cmd.env("RUST_LOG", env_or("CHAT_TEST_SERVER_LOG", "warn"))
            .stdin(Stdio::null())
            // The servers log to stdout: shown with CHAT_TEST_SERVER_LOG set.
            .stdout(if std::env::var_os("CHAT_TEST_SERVER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        cmd
    }

    /// Starts node `node_id` (server id `node{id}`, region `r{id}`) and
    /// waits until it is healthy.
    async fn start(&self, node_id: u16) -> Node {
        let port = free_port();
        let child = self
            .command(node_id, port)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.ports.lock().unwrap().insert(node_id, port);
        // Killed and waited for when dropped.
        let node = Node {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            server_id: format!("node{node_id}"),
        };
        let http = reqwest::Client::new();
        for _ in 0..400 {
            if let Ok(r) = http.get(format!("{}/healthz", node.base)).send().await {
                if r.status() == 200 {
                    return node;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("node {node_id} never became healthy");
    }

    /// The WebSocket URL of node `node_id`, as `route` names it.
    fn ws_of(&self, node_id: u16) -> String {
        let port = self
            .ports
            .lock()
            .unwrap()
            .get(&node_id)
            .copied()
            .unwrap_or(0);
        format!("ws://127.0.0.1:{port}/v1/ws")
    }

    /// `route` asked of `via` (as a signed-in user), for `region`.
    async fn route(&self, via: &Node, region: Option<&str>) -> Option<String> {
        let token = self
            .prober
            .get_or_init(|| async { signup(via, "prober").await.token() })
            .await;
        let mut req = reqwest::Client::new()
            .get(format!("{}/v1/route", via.base))
            .bearer_auth(token);
        if let Some(r) = region {
            req = req.query(&[("region", r)]);
        }
        let v: serde_json::Value = req.send().await.ok()?.json().await.ok()?;
        v["ws_url"].as_str().map(str::to_owned)
    }

    /// Waits until `node`'s route view lists nodes `1..=n`: asked for
    /// region `r{i}`, route names node `i` (a server in the client's region
    /// is preferred whenever the view has one).
    async fn wait_for_servers(&self, node: &Node, n: u16) {
        let mut last = None;
        for _ in 0..100 {
            let mut all = true;
            for i in 1..=n {
                let answer = self.route(node, Some(&format!("r{i}"))).await;
                if answer.as_deref() != Some(self.ws_of(i).as_str()) {
                    all = false;
                    last = answer;
                }
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the route view of {} never showed {n} servers; last answer {last:?}",
            node.server_id
        );
    }

    /// Nodes 1 and 2, each listed in the other's route view.
    async fn two_nodes(&self) -> (Node, Node) {
        let n1 = self.start(1).await;
        let n2 = self.start(2).await;
        self.wait_for_servers(&n1, 2).await;
        self.wait_for_servers(&n2, 2).await;
        (n1, n2)
    }

    async fn drop_schema(&self) {
        let (client, conn) = tokio_postgres::connect(&self.pg_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema()))
            .await
            .unwrap();
    }
}

/// Signs `name` up and lets anyone add them: these tests are about
/// delivery across servers, not consent.
async fn signup(node: &Node, name: &str) -> Session {
    let session = node
        .client()
        .signup(name, "cluster-test-password", None)
        .await
        .unwrap();
    session
        .update_privacy(&UpdatePrivacyRequest {
            who_may_add: Some(WhoMayAdd::Everyone),
            hide_last_seen: None,
        })
        .await
        .unwrap();
    session
}

/// A device of `session` on the server `route` picks in `region`; returns
/// it once synced, with the id of the server it is on.
async fn device_in(session: &Session, region: &str) -> (Connection, String) {
    let options = ConnectOptions {
        region: Some(region.to_owned()),
        heartbeat_interval: Some(Duration::from_secs(1)),
        ..ConnectOptions::default()
    };
    let mut conn = session
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            options,
        )
        .await
        .unwrap();
    let mut server = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), conn.next_event())
            .await
            .expect("connect in time")
        {
            Some(ClientEvent::Connected { server_id }) => server = server_id,
            Some(ClientEvent::Synced { .. }) => return (conn, server),
            Some(_) => {}
            None => panic!("connection ended"),
        }
    }
}

/// Messages with `content` that `conn` shows within `wait`.
async fn messages_with(conn: &mut Connection, content: &str, wait: Duration) -> Vec<MessageId> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, conn.next_event()).await {
        if let ClientEvent::Message(d) = ev {
            if d.message.content == content {
                got.push(d.message.id);
            }
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_every_device_on_every_node_once() {
    let cluster = Cluster::new();
    let (n1, n2) = cluster.two_nodes().await;

    // One-to-one: Alice and Bob each have a device on each node.
    let alice = signup(&n1, "alice").await;
    let bob = signup(&n2, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let (a1, s) = device_in(&alice, "r1").await;
    assert_eq!(s, "node1");
    let (mut a2, s) = device_in(&alice, "r2").await;
    assert_eq!(s, "node2");
    let (mut b1, s) = device_in(&bob, "r1").await;
    assert_eq!(s, "node1");
    let (mut b2, s) = device_in(&bob, "r2").await;
    assert_eq!(s, "node2");
    let sent = a1.send(direct.id, "one to one across nodes").await.unwrap();
    for (name, conn) in [
        ("alice on node2", &mut a2),
        ("bob on node1", &mut b1),
        ("bob on node2", &mut b2),
    ] {
        let got = messages_with(conn, "one to one across nodes", Duration::from_secs(3)).await;
        assert_eq!(got, vec![sent.message_id], "{name}");
    }

    // A group of 100 over the two nodes and a third one.
    let n3 = cluster.start(3).await;
    cluster.wait_for_servers(&n1, 3).await;
    let nodes = [&n1, &n2, &n3];
    let mut members = Vec::new();
    for i in 0..100 {
        members.push(signup(nodes[i % 3], &format!("member{i}")).await);
    }
    let others: Vec<UserId> = members[1..].iter().map(|m| m.user_id()).collect();
    let group = members[0].create_group("hundred", &others).await.unwrap();
    assert_eq!(group.channel.members.len(), 100, "{:?}", group.invited);
    let mut devices = Vec::new();
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (i, m) in members.iter().enumerate() {
        let (conn, server) = device_in(m, &format!("r{}", i % 3 + 1)).await;
        *per_node.entry(server).or_default() += 1;
        devices.push(conn);
    }
    assert_eq!(per_node.len(), 3, "devices on every node: {per_node:?}");
    let sent = devices[0]
        .send(group.channel.id, "to the hundred")
        .await
        .unwrap();
    let mut waits = Vec::new();
    for (i, mut conn) in devices.into_iter().enumerate().skip(1) {
        waits.push(tokio::spawn(async move {
            let got = messages_with(&mut conn, "to the hundred", Duration::from_secs(5)).await;
            (i, got)
        }));
    }
    for w in waits {
        let (i, got) = w.await.unwrap();
        assert_eq!(got, vec![sent.message_id], "member {i} (on r{})", i % 3 + 1);
    }
    drop((a1, a2, b1, b2));
    drop((n1, n2, n3));
    cluster.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_bus_carries_messages_between_nodes() {
    let mut cluster = Cluster::new();
    cluster.redis_bus = true;
    let (n1, n2) = cluster.two_nodes().await;
    let alice = signup(&n1, "alice").await;
    let bob = signup(&n2, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let (a, _) = device_in(&alice, "r1").await;
    let (mut b1, s) = device_in(&bob, "r1").await;
    assert_eq!(s, "node1");
    let (mut b2, s) = device_in(&bob, "r2").await;
    assert_eq!(s, "node2");
    let sent = a.send(direct.id, "over redis").await.unwrap();
    for b in [&mut b1, &mut b2] {
        let got = messages_with(b, "over redis", Duration::from_secs(3)).await;
        assert_eq!(got, vec![sent.message_id]);
    }
    drop((a, b1, b2, n1, n2));
    cluster.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_on_another_node_sees_online_and_offline_once() {
    let cluster = Cluster::new();
    let (n1, n2) = cluster.two_nodes().await;
    let carol = signup(&n1, "carol").await;
    let dave = signup(&n2, "dave").await;
    carol.add_friend(dave.user_id()).await.unwrap();
    dave.add_friend(carol.user_id()).await.unwrap();
    let (mut watcher, s) = device_in(&carol, "r1").await;
    assert_eq!(s, "node1");
    let (dave_conn, s) = device_in(&dave, "r2").await;
    assert_eq!(s, "node2");
    // Online now; offline once the 3 s presence timeout has passed after
    // Dave's device leaves (no goodbye counts: it is the timeout).
    tokio::time::sleep(Duration::from_secs(2)).await;
    dave_conn.close().await;
    drop(dave_conn);
    let mut changes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(9);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, watcher.next_event()).await {
        if let ClientEvent::Presence(p) = ev {
            assert_eq!(p.user, dave.user_id());
            changes.push(p.status);
        }
    }
    assert_eq!(
        changes,
        vec![PresenceStatus::Online, PresenceStatus::Offline],
        "each change seen once, in order"
    );
    drop((n1, n2));
    cluster.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_spreads_clients_over_every_node() {
    let cluster = Cluster::new();
    let nodes = [
        cluster.start(1).await,
        cluster.start(2).await,
        cluster.start(3).await,
    ];
    for n in &nodes {
        cluster.wait_for_servers(n, 3).await;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for i in 0..600 {
        let ws = cluster
            .route(&nodes[i % 3], None)
            .await
            .expect("route answers");
        *counts.entry(ws).or_default() += 1;
    }
    for id in 1..=3 {
        let c = counts.get(&cluster.ws_of(id)).copied().unwrap_or(0);
        assert!(
            (140..=260).contains(&c),
            "{counts:?}: every node gets about a third"
        );
    }
    drop(nodes);
    cluster.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_node_id_refuses_to_start() {
    let cluster = Cluster::new();
    let n1 = cluster.start(7).await;
    // Same node id, another server id: refused once the holder's lease
    // (3 s) would have run out, with a clear error.
    let out = cluster
        .command_as(7, "impostor", free_port())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the second server must not serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node id is held by another live server"),
        "{err}"
    );
    // Once the holder leaves, the id is free.
    let mut n1 = n1;
    assert!(n1.terminate().success());
    let again = cluster.start(7).await;
    drop(again);
    cluster.drop_schema().await;
}

/// A raw WebSocket, for frames the SDK does not surface.
struct Raw {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next: u64,
}

impl Raw {
    async fn connect(node: &Node, token: &str) -> Self {
        let url = format!(
            "{}/v1/ws?device={}&token={token}&v={}",
            node.base.replace("http://", "ws://"),
            DeviceId::new_random(),
            chat_core::protocol::PROTOCOL_VERSION
        );
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let mut raw = Self { ws, next: 0 };
        assert!(matches!(raw.frame().await, ServerFrame::Welcome(_)));
        raw
    }

    async fn frame(&mut self) -> ServerFrame {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("a frame in time")
                .expect("open")
                .expect("ok");
            if let WsMessage::Text(t) = m {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    async fn request(&mut self, request: Request) -> Reply {
        self.next += 1;
        let id = format!("q{}", self.next);
        let frame = ClientFrame {
            id: id.clone(),
            request,
        };
        self.ws
            .send(WsMessage::Text(
                serde_json::to_string(&frame).unwrap().into(),
            ))
            .await
            .unwrap();
        loop {
            if let ServerFrame::Reply(r) = self.frame().await {
                if r.id.as_deref() == Some(id.as_str()) {
                    return r;
                }
            }
        }
    }

    async fn send(&mut self, channel: ChannelId, content: &str) -> Reply {
        self.request(Request::Send {
            channel,
            client_msg_id: ClientMsgId::new_random(),
            content: content.to_owned(),
            reply_to: None,
            attachments: Vec::new(),
        })
        .await
    }

    /// Waits for a live message event with `content`; returns the frames
    /// seen before it.
    async fn until_message(&mut self, content: &str) -> Vec<ServerFrame> {
        let mut before = Vec::new();
        loop {
            let f = self.frame().await;
            if let ServerFrame::Event(Event::Message { message, .. }) = &f {
                if message.content == content {
                    return before;
                }
            }
            before.push(f);
        }
    }

    async fn until_resync(&mut self) {
        loop {
            if let ServerFrame::Event(Event::Resync {}) = self.frame().await {
                return;
            }
        }
    }
}

fn ok(reply: &Reply) {
    assert!(reply.error.is_none(), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_broker_restart_sends_ack_and_live_delivery_resumes_with_a_resync() {
    let nats = Engine::start(Kind::Nats).await.unwrap();
    let mut cluster = Cluster::new();
    cluster.nats_url = nats.url();
    let mut nats = nats;
    let n1 = cluster.start(1).await;
    let n2 = cluster.start(2).await;
    let alice = signup(&n1, "alice").await;
    let bob = signup(&n2, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let mut a = Raw::connect(&n1, &alice.token()).await;
    let mut b = Raw::connect(&n2, &bob.token()).await;
    ok(&a.send(direct.id, "before").await);
    b.until_message("before").await;

    nats.kill();
    // The send still acks: the message is in Bob's inbox.
    let reply = a.send(direct.id, "during").await;
    ok(&reply);
    let Some(ReplyBody::Sent { message_id, .. }) = reply.result.clone() else {
        panic!("{reply:?}")
    };
    nats.restart().await.unwrap();
    // Bob's server tells him live delivery had a gap...
    b.until_resync().await;
    // ...and a sync from his cursor has the message.
    let synced = b
        .request(Request::Sync {
            after: Some(chat_core::Seq::ZERO),
            limit: None,
        })
        .await;
    let Some(ReplyBody::Synced { entries, .. }) = synced.result else {
        panic!("{synced:?}")
    };
    assert!(
        entries.iter().any(|e| e.message.id == message_id),
        "the message is in the inbox"
    );
    // Live delivery is back by itself.
    ok(&a.send(direct.id, "after").await);
    b.until_message("after").await;
    drop((n1, n2));
    cluster.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_store_restart_fails_soft_and_recovers() {
    let mut redis = Engine::start(Kind::Redis).await.unwrap();
    let mut cluster = Cluster::new();
    cluster.redis_url = redis.url();
    let n1 = cluster.start(1).await;
    let alice = signup(&n1, "alice").await;
    let bob = signup(&n1, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let mut a = Raw::connect(&n1, &alice.token()).await;
    let mut b = Raw::connect(&n1, &bob.token()).await;

    redis.kill();
    // Heartbeats are answered and sends delivered while presence is down.
    for i in 0..3 {
        ok(&a.request(Request::Heartbeat {}).await);
        ok(&a.send(direct.id, &format!("while down {i}")).await);
        b.until_message(&format!("while down {i}")).await;
    }
    redis.restart().await.unwrap();
    // Presence recovers with the next heartbeats.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        ok(&a.request(Request::Heartbeat {}).await);
        let r = b
            .request(Request::Presence {
                users: vec![alice.user_id()],
            })
            .await;
        if let Some(ReplyBody::Presence { users }) = &r.result {
            if users[0].status == PresenceStatus::Online {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never recovered: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(n1);
    cluster.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_outage_keeps_serving_and_routing_from_the_last_view() {
    let mut etcd = Engine::start(Kind::Etcd).await.unwrap();
    let mut cluster = Cluster::new();
    cluster.etcd = etcd.url();
    let (n1, n2) = cluster.two_nodes().await;
    let alice = signup(&n1, "alice").await;
    let bob = signup(&n2, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let (a, _) = device_in(&alice, "r1").await;
    let (mut b, _) = device_in(&bob, "r2").await;

    etcd.kill();
    // Longer than the 3 s lease: the view is kept, not emptied.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.wait_for_servers(&n1, 2).await;
    cluster.wait_for_servers(&n2, 2).await;
    let sent = a.send(direct.id, "while discovery is down").await.unwrap();
    let got = messages_with(&mut b, "while discovery is down", Duration::from_secs(3)).await;
    assert_eq!(got, vec![sent.message_id]);
    // A new client still connects through route.
    let (mut late, _) = device_in(&bob, "r1").await;

    etcd.restart().await.unwrap();
    // The servers register again; route keeps answering with both.
    tokio::time::sleep(Duration::from_secs(4)).await;
    cluster.wait_for_servers(&n2, 2).await;
    let sent = a.send(direct.id, "after discovery is back").await.unwrap();
    let got = messages_with(&mut late, "after discovery is back", Duration::from_secs(3)).await;
    assert_eq!(got, vec![sent.message_id]);
    drop((a, b, late, n1, n2));
    cluster.drop_schema().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_discovery_routes_between_nodes_and_guards_node_ids() {
    let mut cluster = Cluster::new();
    cluster.zookeeper = Some(env_or("CHAT_TEST_ZOOKEEPER", "127.0.0.1:2181"));
    let (n1, n2) = cluster.two_nodes().await;
    let alice = signup(&n1, "alice").await;
    let bob = signup(&n2, "bob").await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let (a, s) = device_in(&alice, "r1").await;
    assert_eq!(s, "node1");
    let (mut b, s) = device_in(&bob, "r2").await;
    assert_eq!(s, "node2");
    let sent = a.send(direct.id, "routed by zookeeper").await.unwrap();
    let got = messages_with(&mut b, "routed by zookeeper", Duration::from_secs(3)).await;
    assert_eq!(got, vec![sent.message_id]);
    let out = cluster
        .command_as(2, "impostor", free_port())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the second server must not serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node id is held by another live server"),
        "{err}"
    );
    drop((a, b, n1, n2));
    cluster.drop_schema().await;
}
