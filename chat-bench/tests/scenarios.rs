//! Every scenario end to end at a small size against a server started in
//! the test process, asserting correctness (every acknowledged message
//! delivered exactly once, every connection held, nothing lost across a
//! reconnect storm), never speed.

use chat_bench::report::{Report, RunReport};
use chat_bench::{run, BenchError, Cli};
use clap::Parser;

async fn bench(args: &[&str]) -> Result<RunReport, BenchError> {
    let argv = std::iter::once("chat-bench")
        .chain(args.iter().copied())
        .chain(["--quiet"]);
    let cli = Cli::try_parse_from(argv).expect("valid arguments");
    run(&cli).await
}

async fn passing(args: &[&str]) -> RunReport {
    let report = bench(args).await.expect("the scenario runs");
    assert!(report.passed, "{}", report.table());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_held_and_counted() {
    let r = passing(&[
        "connections",
        "--embedded-server",
        "memory",
        "-n",
        "150",
        "--hold",
        "1.5",
        "--source-ips",
        "127.0.0.1,127.0.0.2",
    ])
    .await;
    let Report::Connections(c) = &r.report else {
        panic!("not a connections report")
    };
    assert_eq!((c.connected, c.held, c.failed, c.dropped), (150, 150, 0, 0));
    assert_eq!(c.server_connections, Some(150));
    assert_eq!(c.users, 15);
    assert!(c.server_rss_after_kib.is_some());
    assert!(c.server_in_load_process);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_delivers_every_ack_once_and_compares_with_the_relay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("one-to-one.json");
    let json_arg = json.to_str().expect("utf-8 path");
    let r = passing(&[
        "one-to-one",
        "--embedded-server",
        "memory",
        "--pairs",
        "10",
        "--duration",
        "1.5",
        "--baseline",
        "--json",
        json_arg,
    ])
    .await;
    let Report::OneToOne(t) = &r.report else {
        panic!("not a one-to-one report")
    };
    let o = &t.outcome;
    assert!(o.acked > 0);
    assert_eq!(o.expected_deliveries, o.acked);
    assert_eq!(o.delivered + o.recovered_by_sync, o.acked);
    assert_eq!((o.lost, o.duplicated, o.unanswered), (0, 0, 0));
    assert_eq!(o.latency.count, o.delivered);
    let base = t.baseline.as_ref().expect("baseline ran");
    assert!(base.outcome.acked > 0);
    assert_eq!(base.outcome.delivered, base.outcome.acked);
    assert!(t.ratio.expect("ratio").acked_per_sec > 0.0);
    // The JSON report is complete and machine-readable.
    let text = std::fs::read_to_string(&json).expect("report written");
    let back: RunReport = serde_json::from_str(&text).expect("report parses");
    assert!(back.passed);
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["scenario"], "one-to-one");
    assert!(v["outcome"]["latency"]["p999_ms"].is_number());
    assert!(v["baseline"]["outcome"]["acked_per_sec"].is_number());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_at_a_rate_on_the_durable_store() {
    let r = passing(&[
        "one-to-one",
        "--embedded-server",
        "embedded",
        "--pairs",
        "5",
        "--duration",
        "1.5",
        "--rate",
        "200",
    ])
    .await;
    let Report::OneToOne(t) = &r.report else {
        panic!("not a one-to-one report")
    };
    let o = &t.outcome;
    // 200 msg/s for 1.5 s: about 300 messages, never more.
    assert!(o.messages_sent <= 310, "{}", o.messages_sent);
    assert!(o.acked >= 150, "{}", o.acked);
    assert_eq!(o.delivered + o.recovered_by_sync, o.acked);
    assert_eq!((o.lost, o.duplicated), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_on_postgres_in_a_schema_of_its_own() {
    // The local PostgreSQL (CHAT_BENCH_PG_URL to point elsewhere); the
    // run's schema is dropped when it ends.
    let r = passing(&[
        "one-to-one",
        "--embedded-server",
        "postgres",
        "--pairs",
        "5",
        "--duration",
        "1",
    ])
    .await;
    let Report::OneToOne(t) = &r.report else {
        panic!("not a one-to-one report")
    };
    let o = &t.outcome;
    assert!(o.acked > 0);
    assert_eq!(o.delivered + o.recovered_by_sync, o.acked);
    assert_eq!((o.lost, o.duplicated, o.unanswered), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_fans_out_to_every_member_once() {
    let r = passing(&[
        "group",
        "--embedded-server",
        "memory",
        "--groups",
        "1",
        "--members",
        "100",
        "--senders",
        "2",
        "--duration",
        "1.5",
        "--rate",
        "100",
    ])
    .await;
    let Report::Group(t) = &r.report else {
        panic!("not a group report")
    };
    let o = &t.outcome;
    assert!(o.acked > 0);
    // Every message reaches the 99 other members (a sender gets the other
    // sender's messages, not its own).
    assert_eq!(o.expected_deliveries, o.acked * 99);
    assert_eq!(o.delivered + o.recovered_by_sync, o.expected_deliveries);
    assert_eq!((o.lost, o.duplicated), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_loses_nothing() {
    let r = passing(&[
        "reconnect-storm",
        "--embedded-server",
        "embedded",
        "-n",
        "100",
        "--away",
        "2",
    ])
    .await;
    let Report::ReconnectStorm(s) = &r.report else {
        panic!("not a reconnect report")
    };
    assert_eq!((s.clients, s.synced, s.failed, s.lost), (100, 100, 0, 0));
    assert_eq!(s.users, 20);
    assert_eq!(s.messages_away, 40);
    // Every client got its user's two away messages by sync.
    assert!(s.synced_messages - s.already_had >= 200, "{s:?}");
    assert_eq!(s.back_latency.count, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_alone() {
    let r = passing(&["baseline", "--pairs", "5", "--duration", "1"]).await;
    let Report::Baseline(t) = &r.report else {
        panic!("not a baseline report")
    };
    assert!(t.outcome.acked > 0);
    assert_eq!(t.outcome.delivered, t.outcome.acked);
    assert!(r.target.is_none());
}

#[tokio::test]
async fn limits_are_reported_plainly() {
    // Past one process's open files (checked before anything is started).
    let over = chat_bench::limits::FileLimits::current()
        .connection_budget(1)
        .map(|b| b + 100);
    if let Some(n) = over.filter(|n| *n < 27_000) {
        let n = n.to_string();
        let err = bench(&["connections", "--server", "http://127.0.0.1:1", "-n", &n])
            .await
            .expect_err("over the open-file limit");
        let msg = err.to_string();
        assert!(
            msg.contains("open-file limit") && msg.contains("--processes"),
            "{msg}"
        );
    }
    // Past one source address's ephemeral ports.
    let err = bench(&[
        "connections",
        "--server",
        "http://127.0.0.1:1",
        "-n",
        "100000",
    ])
    .await
    .expect_err("over the ephemeral ports");
    assert!(err.to_string().contains("--source-ips"), "{err}");
    // Only loopback.
    let err = bench(&["connections", "--server", "http://192.0.2.1:80", "-n", "1"])
        .await
        .expect_err("not loopback");
    assert!(err.to_string().contains("loopback"), "{err}");
    let err = bench(&[
        "connections",
        "--server",
        "http://127.0.0.1:1",
        "-n",
        "1",
        "--source-ips",
        "10.1.2.3",
    ])
    .await
    .expect_err("not loopback");
    assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
}

#[test]
fn several_load_processes_add_up() {
    // The binary re-executes itself: two children hold 30 connections each
    // against a server in the parent.
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("connections.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args([
            "connections",
            "--embedded-server",
            "memory",
            "-n",
            "60",
            "--hold",
            "1",
            "--processes",
            "2",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("chat-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PASS"), "{stdout}");
    let report: RunReport =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("json");
    let Report::Connections(c) = report.report else {
        panic!("not a connections report")
    };
    assert_eq!((c.processes, c.connected, c.held), (2, 60, 60));
    assert_eq!(c.server_connections, Some(60));
}

/// `--two-servers-nats`: the same pairs on two servers with the bus on NATS
/// (`CHAT_TEST_NATS_URL`, default the local server) between them, every
/// message crossing the broker, reported beside the one-server run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_to_one_across_two_servers_over_nats() {
    let nats =
        std::env::var("CHAT_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let r = passing(&[
        "one-to-one",
        "--embedded-server",
        "memory",
        "--pairs",
        "10",
        "--duration",
        "1.5",
        "--two-servers-nats",
        &nats,
    ])
    .await;
    let Report::OneToOne(t) = &r.report else {
        panic!("not a one-to-one report")
    };
    let two = &t.two_servers.as_ref().expect("the two-server run").outcome;
    assert!(two.acked > 0);
    assert_eq!(two.expected_deliveries, two.acked);
    assert_eq!(two.delivered + two.recovered_by_sync, two.acked);
    assert_eq!((two.lost, two.duplicated, two.unanswered), (0, 0, 0));
    assert!(t.two_servers_ratio.is_some());
    assert!(r.table().contains("two chat servers over NATS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signups_sample_the_server_s_memory_on_the_embedded_store() {
    let r = passing(&[
        "signups",
        "--embedded-server",
        "embedded",
        "-n",
        "60",
        "--concurrency",
        "4",
        "--sample-every",
        "20",
    ])
    .await;
    let Report::Signups(s) = &r.report else {
        panic!("not a signups report")
    };
    assert_eq!((s.signed_up, s.failed), (60, 0));
    let points: Vec<u64> = s.samples.iter().map(|(n, _)| *n).collect();
    assert_eq!(points, [0, 20, 40, 60]);
    assert!(s.server_rss_after_kib.is_some());
    assert!(s.late_growth_bytes_per_signup.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_storm_reports_the_real_user_s_logins_and_the_attack_answers() {
    let r = passing(&[
        "login-storm",
        "--embedded-server",
        "memory",
        "--attackers",
        "4",
        "--duration",
        "1",
        "--real-interval",
        "0.1",
        "--source-ips",
        "127.0.0.1,127.0.0.2",
    ])
    .await;
    let Report::LoginStorm(s) = &r.report else {
        panic!("not a login-storm report")
    };
    assert!(s.real_logins.count > 0);
    assert!(s.attack_statuses.get(&401).copied().unwrap_or(0) > 0);
    assert!(s.server_rss_after_kib.is_some());
}
