//! Faults under load on a real cluster: three `chat-server` processes
//! (the harness, `chat_bench::harness`) on PostgreSQL, NATS, Redis and
//! etcd, SDK clients that connect through `route`, and the checker
//! (`chat_bench::checker`) judging every run: every acknowledged message
//! shown on every member device exactly once, in order, history reaching
//! every device, no cursor past an unshown message. Each test prints the
//! checker's report and its measured figures.
//!
//! Needs the engines of the README (`.ci/engines start` for etcd),
//! `nats-server` on PATH for the broker restart, and the server binary
//! built with `cargo build -p chat-server --features full,etcd` (or
//! `CHAT_SERVER_BIN`), and the `faults` feature: `cargo test -p chat-bench
//! --features faults --test faults -- --test-threads=1`. One test at a
//! time: each is three servers and their load on this machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_bench::harness::{Cluster, ClusterConfig};
use chat_bench::workload::{quantile, Workload, WorkloadConfig, WorkloadReport};
use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, MemoryCursorStore, Session,
};
use chat_conformance::engines::{Engine, Kind};
use chat_core::api::UpdatePrivacyRequest;
use chat_core::{DeviceId, PresenceStatus, UserId, WhoMayAdd};

/// 30 users with two devices each: 60 connections, about 150 sends a
/// second, one-to-one and groups of five.
fn load() -> WorkloadConfig {
    WorkloadConfig::default()
}

async fn three_nodes() -> Cluster {
    Cluster::start(ClusterConfig::local(3).unwrap())
        .await
        .unwrap()
}

async fn started(cluster: &Cluster, config: &WorkloadConfig) -> Workload {
    let at = Instant::now();
    let w = Workload::start(&cluster.http_url(), config).await.unwrap();
    let devices = config.users * config.devices_per_user;
    assert!(
        w.wait_connected(devices, Duration::from_secs(60)).await,
        "every device connects"
    );
    let connected = at.elapsed();
    w.wait_sends(100, Duration::from_secs(60)).await;
    println!(
        "load: {} users, {devices} devices connected after {connected:?}, 100 sends acked after {:?}",
        config.users,
        at.elapsed()
    );
    w
}

/// Finishes the load and asserts the checker passed with nothing surfaced
/// to the application.
async fn finished(w: Workload) -> WorkloadReport {
    let at = Instant::now();
    let report = w.finish(Duration::from_secs(30)).await.unwrap();
    println!("checked after {:?}", at.elapsed());
    println!("{report}");
    assert!(report.check.passed(), "{report}");
    assert!(report.sends > 0);
    report
}

/// The node holding most devices now.
fn busiest(w: &Workload) -> u16 {
    (1..=3u16)
        .max_by_key(|id| w.devices_on(&format!("node{id}")).len())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_server_under_load_loses_nothing() {
    let mut cluster = three_nodes().await;
    let config = load();
    let w = started(&cluster, &config).await;
    let victim = busiest(&w);
    let on_victim = w.devices_on(&format!("node{victim}")).len();
    assert!(on_victim > 0);

    cluster.kill(victim).await.unwrap();
    let killed_at = Instant::now();
    let devices = config.users * config.devices_per_user;
    assert!(
        moved_off(&w, &format!("node{victim}"), devices).await,
        "every device back, on the survivors"
    );
    let all_back = killed_at.elapsed();
    w.wait_sends(400, Duration::from_secs(60)).await;

    let report = finished(w).await;
    let victim_id = format!("node{victim}");
    let spread = report.spread_from(&victim_id);
    let moved: usize = spread.values().sum();
    println!(
        "kill -9 of {victim_id} ({on_victim} devices): reconnect p99 {:?}, all back after {all_back:?}, \
         spread over survivors {spread:?}",
        report.reconnect_p99_from(&victim_id)
    );
    assert!(moved >= on_victim, "every device of the killed node moved");
    assert!(!spread.contains_key(&victim_id));
    assert!(spread.len() > 1, "spread over both survivors: {spread:?}");
    cluster.stop().await;
}

/// Waits until no device is on `server_id` and all `devices` are
/// connected elsewhere.
async fn moved_off(w: &Workload, server_id: &str, devices: usize) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if w.devices_on(server_id).is_empty() && w.connected() >= devices {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_sigstop_loses_nothing_when_it_wakes() {
    let mut cluster = three_nodes().await;
    let config = load();
    let w = started(&cluster, &config).await;
    let victim = busiest(&w);
    let victim_id = format!("node{victim}");
    let on_victim = w.devices_on(&victim_id).len();
    // Frozen: its sockets stay open, nothing answers. Its clients notice
    // by their unanswered heartbeats and requests, and move.
    cluster.pause(victim).await.unwrap();
    let frozen_at = Instant::now();
    let devices = config.users * config.devices_per_user;
    assert!(
        moved_off(&w, &victim_id, devices).await,
        "every device moved off the frozen node"
    );
    let moved_after = frozen_at.elapsed();
    w.wait_sends(200, Duration::from_secs(60)).await;
    // It wakes with whatever it was doing: sends half done, sessions of
    // clients long gone.
    cluster.resume(victim).await.unwrap();
    w.wait_sends(300, Duration::from_secs(60)).await;
    let report = finished(w).await;
    println!(
        "SIGSTOP of {victim_id} ({on_victim} devices): all moved after {moved_after:?}, \
         move p99 {:?}, spread {:?}",
        report.reconnect_p99_from(&victim_id),
        report.spread_from(&victim_id)
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    cluster.stop().await;
}

/// A user with one device on node 3 and a friend watching from node 1.
struct Watched {
    session: Session,
}

async fn signup(client: &ChatClient, name: &str) -> Session {
    let s = client
        .signup(name, chat_bench::setup::PASSWORD, None)
        .await
        .unwrap();
    s.update_privacy(&UpdatePrivacyRequest {
        who_may_add: Some(WhoMayAdd::Everyone),
        hide_last_seen: None,
    })
    .await
    .unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_a_killed_server_go_offline_once_and_online_once() {
    let mut cluster = three_nodes().await;
    let client = ChatClient::new(&cluster.http_url()).unwrap();
    let prefix = chat_bench::setup::run_prefix();
    let watcher = signup(&client, &format!("{prefix}-watcher")).await;
    let mut watched = Vec::new();
    for i in 0..5 {
        let session = signup(&client, &format!("{prefix}-w{i}")).await;
        session.add_friend(watcher.user_id()).await.unwrap();
        watcher.add_friend(session.user_id()).await.unwrap();
        watched.push(Watched { session });
    }
    let options = |region: &str, reconnect: Duration| ConnectOptions {
        region: Some(region.into()),
        // Away longer than the presence timeout (3 s): offline shows
        // before the device is back.
        reconnect_min: reconnect,
        reconnect_max: reconnect,
        jitter: false,
        ..ConnectOptions::default()
    };
    let mut eyes = watcher
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            options("r1", Duration::from_millis(200)),
        )
        .await
        .unwrap();
    let mut devices = Vec::new();
    for w in &watched {
        let mut conn = w
            .session
            .connect(
                DeviceId::new_random(),
                Arc::new(MemoryCursorStore::new()),
                options("r3", Duration::from_secs(8)),
            )
            .await
            .unwrap();
        loop {
            match conn.next_event().await.unwrap() {
                ClientEvent::Connected { server_id } => {
                    assert_eq!(server_id, "node3");
                    break;
                }
                _ => continue,
            }
        }
        // Keep its events flowing (and so its reconnects) in the background.
        devices.push(tokio::spawn(async move {
            let mut servers = Vec::new();
            while let Some(e) = conn.next_event().await {
                if let ClientEvent::Connected { server_id } = e {
                    servers.push(server_id);
                    if servers.len() == 1 {
                        break;
                    }
                }
            }
            (conn, servers)
        }));
    }
    let ids: Vec<UserId> = watched.iter().map(|w| w.session.user_id()).collect();
    // The watcher sees each online first (its connect or theirs).
    let mut seen: HashMap<UserId, Vec<PresenceStatus>> = HashMap::new();
    let online_now = |seen: &HashMap<UserId, Vec<PresenceStatus>>| {
        ids.iter()
            .all(|u| seen.get(u).and_then(|s| s.last()) == Some(&PresenceStatus::Online))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !online_now(&seen) {
        match tokio::time::timeout_at(deadline, eyes.next_event()).await {
            Ok(Some(ClientEvent::Presence(p))) => seen.entry(p.user).or_default().push(p.status),
            Ok(Some(_)) => {}
            _ => {
                // A friend online before the watcher connected is not
                // announced to it: ask.
                let now = watcher.presence(&ids).await.unwrap();
                if now.iter().all(|p| p.status == PresenceStatus::Online) {
                    break;
                }
                panic!("friends never all online: {seen:?} / {now:?}");
            }
        }
    }

    cluster.kill(3).await.unwrap();
    let killed_at = Instant::now();
    let mut changes: HashMap<UserId, Vec<(PresenceStatus, Duration)>> = HashMap::new();
    let done = |c: &HashMap<UserId, Vec<(PresenceStatus, Duration)>>| {
        ids.iter().all(|u| c.get(u).is_some_and(|v| v.len() >= 2))
    };
    // Offline after the 3 s timeout, online after the 8 s reconnect
    // delay; then a quiet spell in which no repeat may come.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut quiet_until = None;
    loop {
        let until = quiet_until.unwrap_or(deadline);
        match tokio::time::timeout_at(until, eyes.next_event()).await {
            Ok(Some(ClientEvent::Presence(p))) => {
                changes
                    .entry(p.user)
                    .or_default()
                    .push((p.status, killed_at.elapsed()));
                if done(&changes) && quiet_until.is_none() {
                    quiet_until = Some(tokio::time::Instant::now() + Duration::from_secs(5));
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watcher's connection ended"),
            Err(_) => break,
        }
    }
    let mut offline_after = Vec::new();
    let mut online_after = Vec::new();
    for u in &ids {
        let c = changes.get(u).cloned().unwrap_or_default();
        let statuses: Vec<PresenceStatus> = c.iter().map(|(s, _)| *s).collect();
        assert_eq!(
            statuses,
            vec![PresenceStatus::Offline, PresenceStatus::Online],
            "{u:?}: offline once, then online once"
        );
        offline_after.push(c[0].1);
        online_after.push(c[1].1);
    }
    let mut moved_to = Vec::new();
    for d in devices {
        let (conn, servers) = d.await.unwrap();
        moved_to.extend(servers);
        drop(conn);
    }
    assert!(moved_to.iter().all(|s| s != "node3"), "{moved_to:?}");
    println!(
        "presence after kill -9 of node3 (timeout 3 s, heartbeat 1 s, devices back after 8 s): \
         offline seen after {:?}..{:?}, online again after {:?}..{:?}, each once; devices now on {moved_to:?}",
        quantile(&offline_after, 0.0),
        quantile(&offline_after, 1.0),
        quantile(&online_after, 0.0),
        quantile(&online_after, 1.0),
    );
    drop(eyes);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_sigterm_restart_of_all_three_surfaces_no_error() {
    // History sharded over two databases besides the main one: the
    // checker reads every channel's history back through the shards.
    let mut config = ClusterConfig::local(3).unwrap();
    config.history_shards = 2;
    let mut cluster = Cluster::start(config).await.unwrap();
    let config = load();
    let w = started(&cluster, &config).await;
    let devices = config.users * config.devices_per_user;
    let mut drains = Vec::new();
    for id in 1..=3 {
        let (took, clean) = cluster.terminate(id).await.unwrap();
        assert!(clean, "node {id} exits 0 after SIGTERM");
        drains.push(took);
        cluster.restart(id).await.unwrap();
        assert!(
            w.wait_connected(devices, Duration::from_secs(60)).await,
            "every device back after node {id}"
        );
        w.wait_sends(100, Duration::from_secs(60)).await;
    }
    let report = finished(w).await;
    assert!(
        report.errors.is_empty(),
        "no error surfaced: {:?}",
        report.errors
    );
    println!(
        "rolling SIGTERM restart: drains took {drains:?}; {} moves, p99 {:?}",
        report.reconnects.len(),
        quantile(&report.reconnect, 0.99)
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_broker_restart_under_load_loses_nothing() {
    let mut nats = Engine::start(Kind::Nats).await.unwrap();
    let mut config = ClusterConfig::local(3).unwrap();
    config.nats_url = nats.url();
    let cluster = Cluster::start(config).await.unwrap();
    let w = started(&cluster, &load()).await;
    nats.kill();
    let before = w.sends();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = w.sends() - before;
    nats.restart().await.unwrap();
    w.wait_sends(200, Duration::from_secs(60)).await;
    let report = finished(w).await;
    println!("NATS killed for 3 s and restarted: {during} sends acknowledged while it was down");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    cluster.stop().await;
}

/// Regression (found by the broker restart above): a message whose live
/// publish failed on the sender's node, sent to a device on a node that
/// never lost the broker, with no message after it. Nothing tells that
/// device to sync; the sender's node must publish it again once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_publish_failed_reaches_a_device_on_another_node() {
    let cluster = Cluster::start(ClusterConfig::local(2).unwrap())
        .await
        .unwrap();
    let client = ChatClient::new(&cluster.http_url()).unwrap();
    let prefix = chat_bench::setup::run_prefix();
    let alice = signup(&client, &format!("{prefix}-alice")).await;
    let bob = signup(&client, &format!("{prefix}-bob")).await;
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let connect = |session: &Session, region: &str| {
        let options = ConnectOptions {
            region: Some(region.into()),
            ..ConnectOptions::default()
        };
        let session = session.clone();
        async move {
            let mut conn = session
                .connect(
                    DeviceId::new_random(),
                    Arc::new(MemoryCursorStore::new()),
                    options,
                )
                .await
                .unwrap();
            loop {
                if let Some(ClientEvent::Synced { .. }) = conn.next_event().await {
                    return conn;
                }
            }
        }
    };
    let a = connect(&alice, "r1").await;
    let mut b = connect(&bob, "r2").await;
    // Node 1 loses the broker; node 2 keeps it, so it has no gap to report.
    cluster.cut_bus(1).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = a.send(direct.id, "while node1 is cut").await.unwrap();
    cluster.heal_bus(1).unwrap();
    let shown = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match b.next_event().await {
                Some(ClientEvent::Message(d)) => return Some(d.message.id),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await;
    assert_eq!(
        shown.ok().flatten(),
        Some(sent.message_id),
        "bob's device shows the message without any later one"
    );
    drop((a, b));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_the_broker_for_20_s_loses_nothing() {
    let cluster = three_nodes().await;
    let w = started(&cluster, &load()).await;
    let victim = busiest(&w);
    cluster.cut_bus(victim).unwrap();
    let before = w.sends();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = w.sends() - before;
    cluster.heal_bus(victim).unwrap();
    w.wait_sends(200, Duration::from_secs(60)).await;
    let report = finished(w).await;
    println!(
        "node{victim} cut from NATS for 20 s: {during} sends acknowledged meanwhile, {} moves",
        report.reconnects.len()
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    cluster.stop().await;
}

/// Each user's own presence, as they see it (a user always sees their own).
async fn statuses(w: &Workload) -> Vec<Option<PresenceStatus>> {
    let asks = w.sessions().iter().map(|s| async move {
        s.presence(&[s.user_id()])
            .await
            .ok()
            .and_then(|p| p.first().map(|p| p.status))
    });
    futures::future::join_all(asks).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_store_restart_under_load_fails_no_send_and_recovers() {
    // A private redis-server: the shared one on 6379 serves other tests.
    let mut redis = Engine::start(Kind::Redis).await.unwrap();
    let mut config = ClusterConfig::local(3).unwrap();
    config.redis_url = redis.url();
    let (heartbeat, timeout) = (config.heartbeat_secs, config.presence_timeout_secs);
    let cluster = Cluster::start(config).await.unwrap();
    let w = started(&cluster, &load()).await;
    let online =
        |s: &[Option<PresenceStatus>]| s.iter().all(|p| *p == Some(PresenceStatus::Online));
    assert!(online(&statuses(&w).await), "every user online before");

    // Killed (nothing kept on disk: it comes back empty) for longer than
    // the presence timeout.
    redis.kill();
    let before = w.sends();
    tokio::time::sleep(Duration::from_secs(timeout + 1)).await;
    let during = w.sends() - before;
    redis.restart().await.unwrap();
    let back_at = Instant::now();
    // The next heartbeat of each device writes its user's presence again.
    let mut polls = 0;
    let recovered_after = loop {
        polls += 1;
        if online(&statuses(&w).await) {
            break back_at.elapsed();
        }
        assert!(
            back_at.elapsed() < Duration::from_secs(60),
            "presence never recovered: {:?}",
            statuses(&w).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    w.wait_sends(200, Duration::from_secs(60)).await;
    let report = finished(w).await;
    println!(
        "Redis (presence) killed for {} s and restarted empty: {during} sends acknowledged while \
         it was down; every user online again {recovered_after:?} after it was back ({polls} \
         polls; heartbeat {heartbeat} s, presence timeout {timeout} s); {} moves",
        timeout + 1,
        report.reconnects.len()
    );
    assert!(during > 0, "sends go on while presence is down");
    assert!(
        report.errors.is_empty(),
        "no send failed: {:?}",
        report.errors
    );
    cluster.stop().await;
}

/// How long discovery stays down: `CHAT_FAULT_DISCOVERY_SECS`, else 10 s
/// (over three discovery leases of 3 s: every registration has expired
/// in etcd's eyes; the 30 s shows the same, docs/cluster.md).
fn discovery_outage() -> Duration {
    let secs = std::env::var("CHAT_FAULT_DISCOVERY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs)
}

/// Logs `session`'s user in anew and connects a new device through
/// `route` asking for `region`; the server it lands on.
async fn new_login(cluster: &Cluster, session: &Session, region: &str) -> (Connection, String) {
    let client = ChatClient::new(&cluster.http_url()).unwrap();
    let fresh = client
        .login(&session.user().username, chat_bench::setup::PASSWORD)
        .await
        .unwrap();
    let options = ConnectOptions {
        region: Some(region.into()),
        ..ConnectOptions::default()
    };
    let mut conn = fresh
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            options,
        )
        .await
        .unwrap();
    let server = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match conn.next_event().await {
                Some(ClientEvent::Connected { server_id }) => return server_id,
                Some(_) => continue,
                None => panic!("the new device's connection ended"),
            }
        }
    })
    .await
    .expect("the new device connects");
    (conn, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_down_leaves_clients_alone_and_new_logins_route() {
    let mut etcd = Engine::start(Kind::Etcd).await.unwrap();
    let mut config = ClusterConfig::local(3).unwrap();
    config.etcd_endpoints = etcd.url();
    let ttl = config.discovery_ttl_secs;
    let cluster = Cluster::start(config).await.unwrap();
    let w = started(&cluster, &load()).await;
    let moves_before = w.observed().reconnects.len();

    etcd.kill();
    let outage = discovery_outage();
    let down_at = Instant::now();
    let before = w.sends();
    // Past every lease: then new logins, one per region, through route.
    tokio::time::sleep(Duration::from_secs(ttl + 1)).await;
    let mut late = Vec::new();
    for (i, session) in w.sessions().iter().take(3).enumerate() {
        let want = format!("node{}", i + 1);
        let (conn, server) = new_login(&cluster, session, &format!("r{}", i + 1)).await;
        assert_eq!(server, want, "route names every node from its last view");
        late.push(conn);
    }
    tokio::time::sleep(outage.saturating_sub(down_at.elapsed())).await;
    let during = w.sends() - before;
    let moves_during = w.observed().reconnects.len() - moves_before;
    etcd.restart().await.unwrap();
    // Every node registers again; new logins after the outage route too.
    cluster.wait_for_view().await.unwrap();
    for (i, session) in w.sessions().iter().skip(3).take(3).enumerate() {
        let (conn, server) = new_login(&cluster, session, &format!("r{}", i + 1)).await;
        assert_eq!(server, format!("node{}", i + 1));
        late.push(conn);
    }
    w.wait_sends(200, Duration::from_secs(60)).await;
    let report = finished(w).await;
    println!(
        "etcd (discovery) down for {outage:?} (lease {ttl} s): {during} sends acknowledged \
         meanwhile, {moves_during} devices moved, 3 new logins routed to node1..node3 during and \
         3 after; {} moves in the whole run",
        report.reconnects.len()
    );
    assert_eq!(moves_during, 0, "no connected client was disturbed");
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    for conn in late {
        conn.close().await;
    }
    cluster.stop().await;
}

/// How long the firewall partition lasts: `CHAT_FAULT_PARTITION_SECS`,
/// else the 20 s.
fn partition_time() -> Duration {
    let secs = std::env::var("CHAT_FAULT_PARTITION_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(secs)
}

/// Each server in its own network namespace; the busiest one partitioned
/// from the broker and from discovery (the only ways the servers reach
/// each other) by iptables DROP rules: its packets vanish, no connection
/// is reset, until the rules go. Needs root, `ip netns` and `iptables`:
/// without them the test fails saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_partitioned_by_a_firewall_rule_for_20_s_loses_nothing() {
    let mut config = ClusterConfig::local(3).unwrap();
    config.netns = true;
    let cluster = Cluster::start(config)
        .await
        .unwrap_or_else(|e| panic!("a cluster in network namespaces: {e}"));
    let w = started(&cluster, &load()).await;
    let victim = busiest(&w);
    let on_victim = w.devices_on(&format!("node{victim}")).len();
    let moves_before = w.observed().reconnects.len();
    cluster.partition(victim).unwrap();
    let cut_at = Instant::now();
    let before = w.sends();
    let cut = partition_time();
    // The partition is real: once the victim's discovery lease has run out
    // (3 s), the others' `route` no longer names it.
    let survivor = cluster.nodes().iter().find(|n| n.id != victim).unwrap();
    let asker = ChatClient::new(&survivor.http_url())
        .unwrap()
        .session(w.sessions()[0].auth());
    let victim_ws = format!("{}/", cluster.node(victim).unwrap().addr());
    let forgotten_after = loop {
        let r = asker.route(Some(&format!("r{victim}"))).await.unwrap();
        if !r.ws_url.contains(&victim_ws) {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < cut,
            "node{} still routes to the partitioned node{victim} after {cut:?}",
            survivor.id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(cut.saturating_sub(cut_at.elapsed())).await;
    let during = w.sends() - before;
    let moves_during = w.observed().reconnects.len() - moves_before;
    cluster.heal(victim).unwrap();
    // Healed: it registers again and every node routes to every node.
    cluster.wait_for_view().await.unwrap();
    w.wait_sends(200, Duration::from_secs(60)).await;
    let report = finished(w).await;
    println!(
        "node{victim} ({on_victim} devices) partitioned from NATS and etcd by iptables DROP for \
         {cut:?}: node{} stopped routing to it after {forgotten_after:?}; {during} sends \
         acknowledged meanwhile, {moves_during} moves during, {} in the run",
        survivor.id,
        report.reconnects.len()
    );
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    cluster.stop().await;
}
