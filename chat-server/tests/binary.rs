//! The reference binary: starts on the embedded store (or PostgreSQL), serves,
//! shuts down cleanly on SIGTERM, and a restart on the same storage keeps
//! users, messages and the token secret.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chat_client::{ChatClient, ClientEvent, ConnectOptions, MemoryCursorStore};
use chat_core::DeviceId;
use common::free_port;

fn spawn(port: u16, data: &std::path::Path, extra: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "warn")
        // Cheap password hashing is not a flag; the defaults are what users get.
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

async fn wait_healthy(base: &str) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status() == 200 {
                assert_eq!(r.text().await.unwrap(), "ok");
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server at {base} never became healthy");
}

fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "server exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("server did not stop on SIGTERM");
}

#[tokio::test]
async fn binary_serves_stops_on_sigterm_and_restarts_with_its_data() {
    restart_scenario(&[]).await;
}

#[tokio::test]
async fn binary_on_postgres_restarts_with_its_data() {
    let url = std::env::var("CHAT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("chat_bin_{}", uuid::Uuid::new_v4().simple());
    restart_scenario(&[
        "--postgres-url".into(),
        url.clone(),
        "--postgres-schema".into(),
        schema.clone(),
    ])
    .await;
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The data really went to PostgreSQL.
    let rows = client
        .query_one(&format!("SELECT count(*) FROM {schema}.messages"), &[])
        .await
        .unwrap();
    assert_eq!(rows.get::<_, i64>(0), 1);
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
}

async fn restart_scenario(extra: &[String]) {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    let child = spawn(port, data.path(), extra);
    wait_healthy(&base).await;
    let http = ChatClient::new(&base).unwrap();
    let alice = http.signup("alice", "alice-password", None).await.unwrap();
    let bob = http.signup("bob", "bob-password", None).await.unwrap();
    // A direct channel needs consent: they become friends first.
    alice.add_friend(bob.user_id()).await.unwrap();
    bob.add_friend(alice.user_id()).await.unwrap();
    let direct = alice.open_direct(bob.user_id()).await.unwrap();
    let mut conn = alice
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await
        .unwrap();
    while !matches!(conn.next_event().await, Some(ClientEvent::Synced { .. })) {}
    let sent = conn.send(direct.id, "kept across restarts").await.unwrap();
    conn.close().await;
    terminate(child);

    let child = spawn(port, data.path(), extra);
    wait_healthy(&base).await;
    // The old token still works: the secret was kept in the data directory.
    let me = alice.me().await.unwrap();
    assert_eq!(me.username, "alice");
    let history = bob.history(direct.id, &Default::default()).await.unwrap();
    assert_eq!(history.messages.len(), 1);
    assert_eq!(history.messages[0].id, sent.message_id);
    assert_eq!(history.messages[0].content, "kept across restarts");
    // And a fresh login works against the stored Argon2id hash.
    http.login("bob", "bob-password").await.unwrap();
    terminate(child);
}

/// `--history-shard-url` twice: history goes to two databases by channel,
/// the directory and inboxes stay in `--postgres-url`, and every channel's
/// messages are on the shard `shard_index` names.
#[tokio::test]
async fn binary_spreads_history_over_shard_databases() {
    let url = std::env::var("CHAT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (server_part, _) = url.rsplit_once('/').unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let schema = format!("chat_bin_{run}");
    let shard_dbs: Vec<String> = (0..2).map(|i| format!("chat_bin_shard{i}_{run}")).collect();
    let connect = |url: String| async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    };
    let admin = connect(url.clone()).await;
    for db in &shard_dbs {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
    }
    let shard_urls: Vec<String> = shard_dbs
        .iter()
        .map(|db| format!("{server_part}/{db}"))
        .collect();

    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut args = vec![
        "--postgres-url".to_string(),
        url.clone(),
        "--postgres-schema".into(),
        schema.clone(),
    ];
    for u in &shard_urls {
        args.push("--history-shard-url".into());
        args.push(u.clone());
    }
    let child = spawn(port, data.path(), &args);
    wait_healthy(&base).await;
    let http = ChatClient::new(&base).unwrap();
    let alice = http.signup("alice", "alice-password", None).await.unwrap();
    let mut conn = alice
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await
        .unwrap();
    while !matches!(conn.next_event().await, Some(ClientEvent::Synced { .. })) {}
    let mut channels = Vec::new();
    for i in 0..8 {
        let peer = http
            .signup(&format!("peer{i}"), "peer-password", None)
            .await
            .unwrap();
        peer.add_friend(alice.user_id()).await.unwrap();
        alice.add_friend(peer.user_id()).await.unwrap();
        let direct = alice.open_direct(peer.user_id()).await.unwrap();
        conn.send(direct.id, &format!("to peer {i}")).await.unwrap();
        let history = peer.history(direct.id, &Default::default()).await.unwrap();
        assert_eq!(
            history.messages.len(),
            1,
            "the peer reads its channel's history"
        );
        channels.push(direct.id);
    }
    conn.close().await;
    terminate(child);

    let shards = [
        connect(shard_urls[0].clone()).await,
        connect(shard_urls[1].clone()).await,
    ];
    assert_eq!(
        count(&admin, &schema, None).await,
        0,
        "no history in the main database"
    );
    let mut per_shard = [0i64; 2];
    for c in &channels {
        let home = chat_store::sharded::shard_index(c.as_bytes(), 2);
        assert_eq!(count(&shards[home], &schema, Some(c.0)).await, 1);
        assert_eq!(count(&shards[1 - home], &schema, Some(c.0)).await, 0);
        per_shard[home] += 1;
    }
    assert_eq!(per_shard[0] + per_shard[1], 8);
    assert_eq!(
        count(&shards[0], &schema, None).await + count(&shards[1], &schema, None).await,
        8
    );
    drop(shards);
    admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await
        .unwrap();
    for db in &shard_dbs {
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await
            .unwrap();
    }
}

/// Rows of `schema.messages`, of one channel or all.
async fn count(client: &tokio_postgres::Client, schema: &str, channel: Option<uuid::Uuid>) -> i64 {
    let row = match channel {
        Some(c) => client
            .query_one(
                &format!("SELECT count(*) FROM {schema}.messages WHERE channel_id = $1"),
                &[&c],
            )
            .await
            .unwrap(),
        None => client
            .query_one(&format!("SELECT count(*) FROM {schema}.messages"), &[])
            .await
            .unwrap(),
    };
    row.get(0)
}

/// `GET /v1/me` with `token` against the server at `base`.
async fn me_status(base: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/v1/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `--token-secret-file` (or `CHAT_TOKEN_SECRET_FILE`): the secret is read
/// from the file (surrounding whitespace ignored), nothing is generated in
/// the data directory, another secret invalidates the tokens, and a short
/// or missing secret stops the server from starting.
#[tokio::test]
async fn the_token_secret_comes_from_a_file() {
    let data = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let file = secrets.path().join("token.secret");
    std::fs::write(&file, format!("  {}\n", "k".repeat(40))).unwrap();
    let flag = [
        "--token-secret-file".to_string(),
        file.display().to_string(),
    ];
    // A new port for each start: a port left free between two starts could
    // be taken by another test meanwhile.
    let started = |env_file: Option<&std::path::Path>| {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        match env_file {
            Some(path) => cmd.env("CHAT_TOKEN_SECRET_FILE", path),
            None => cmd.args(&flag),
        };
        (cmd.spawn().unwrap(), format!("http://127.0.0.1:{port}"))
    };

    let (child, base) = started(None);
    wait_healthy(&base).await;
    let alice = ChatClient::new(&base)
        .unwrap()
        .signup("alice", "alice-password", None)
        .await
        .unwrap();
    let token = alice.token();
    assert_eq!(me_status(&base, &token).await, 200);
    terminate(child);
    assert!(
        !data.path().join("token.secret").exists(),
        "no secret is generated when a file is given"
    );

    // The same file through the environment: the token is still good.
    let (child, base) = started(Some(&file));
    wait_healthy(&base).await;
    assert_eq!(me_status(&base, &token).await, 200);
    terminate(child);

    // Another secret in the file: the old token is refused.
    std::fs::write(&file, "m".repeat(40)).unwrap();
    let (child, base) = started(None);
    wait_healthy(&base).await;
    assert_eq!(me_status(&base, &token).await, 401);
    terminate(child);

    // Too short, or missing: the server does not start.
    std::fs::write(&file, "short").unwrap();
    let missing = secrets.path().join("absent");
    for path in [&file, &missing] {
        let status = Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--token-secret-file")
            .arg(path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "started with the secret file {path:?}");
    }
}

#[test]
fn the_help_says_to_prefer_the_secret_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--token-secret-file"), "{help}");
    let flag = help
        .split("--token-secret <")
        .nth(1)
        .expect("--token-secret is documented");
    assert!(
        flag.contains("ps"),
        "the help says why not on the command line: {flag}"
    );
}

/// `--tls-cert`/`--tls-key`: the binary speaks only https and wss, and the
/// SDK, trusting the certificate, signs up and chats over both;
/// `--metrics-listen` moves `/metrics` off the API's listener.
#[tokio::test]
async fn binary_terminates_tls_and_serves_metrics_on_their_own_listener() {
    let data = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_file = data.path().join("cert.pem");
    let key_file = data.path().join("key.pem");
    std::fs::write(&cert_file, cert.cert.pem()).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let child = spawn(
        port,
        data.path(),
        &[
            "--tls-cert".into(),
            cert_file.display().to_string(),
            "--tls-key".into(),
            key_file.display().to_string(),
            "--public-http-url".into(),
            format!("https://localhost:{port}"),
            "--public-ws-url".into(),
            format!("wss://localhost:{port}/v1/ws"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics_port}"),
        ],
    );
    let metrics = format!("http://127.0.0.1:{metrics_port}/metrics");
    let mut page = None;
    for _ in 0..200 {
        if let Ok(r) = reqwest::get(&metrics).await {
            page = Some(r.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(page
        .expect("metrics listener")
        .contains("chat_connections_open 0"));

    let tls = chat_client::TlsOptions::empty()
        .add_root_pem(cert.cert.pem().as_bytes())
        .unwrap();
    let client = ChatClient::with_tls(&format!("https://localhost:{port}"), tls).unwrap();
    let alice = client.signup("alice", "password123", None).await.unwrap();
    let mut conn = alice
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), conn.next_event())
            .await
            .unwrap()
        {
            Some(ClientEvent::Synced { .. }) => break,
            Some(ClientEvent::Error(e)) => panic!("{e:?}"),
            Some(_) => continue,
            None => panic!("connection ended"),
        }
    }
    conn.close().await;
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(reqwest::get(format!("http://127.0.0.1:{port}/healthz"))
        .await
        .is_err());
    terminate(child);
}
