//! The echo bot (`examples/echo_bot.rs`) as a real process against a real
//! server on the embedded store: killed with SIGKILL halfway through a
//! 300-message backlog, started again, then carried through a restart of
//! the server. Nothing is lost (every message is answered), nothing the
//! bot acknowledged is delivered to it again, and nothing is answered
//! twice (the channel's history holds exactly one answer per message).

// Test scaffolding: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, DeviceId, HistoryQuery, MemoryCursorStore,
    MessageId, Session,
};
use chat_server::{CancellationToken, ChatServer, ServerConfig, ServerError};
use examples::product;

const BOT: &str = "echo-bot";
const BOT_PASSWORD: &str = "a long bot password";
const WAIT: Duration = Duration::from_secs(120);

fn config() -> ServerConfig {
    ServerConfig {
        argon2_memory_kib: 256,
        argon2_iterations: 1,
        // The bot answers a backlog as fast as it can; the default 50
        // requests a second would only make the test slow.
        rate_limit_per_sec: 100_000,
        rate_limit_burst: 100_000,
        drain_timeout: Duration::from_secs(5),
        ..ServerConfig::default()
    }
}

/// A server on the embedded store in `dir`, on a clone of `listener` (so a
/// restart keeps the address without another process taking the port).
struct Server {
    chat: ChatServer,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
}

impl Server {
    async fn start(listener: &std::net::TcpListener, dir: &Path) -> Server {
        let listener = tokio::net::TcpListener::from_std(listener.try_clone().unwrap()).unwrap();
        let chat = product::chat_server(dir, config()).await.unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(chat_server::serve(chat.clone(), listener, stop.clone()));
        Server { chat, stop, task }
    }

    /// Graceful shutdown; the store is closed once this returns.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
        drop(self.chat);
    }
}

/// One line of the bot's output: what it did with which message.
#[derive(Debug)]
enum Step {
    /// Answered (`duplicate`: the server had the answer already).
    Echoed(MessageId, bool),
    Acked(MessageId),
    /// Anything else, kept for the failure message.
    Other(#[allow(dead_code)] String),
}

fn parse(line: &str) -> Step {
    let fields: HashMap<&str, &str> = line
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .collect();
    let id = || MessageId(fields["id"].parse().unwrap());
    match line.split_whitespace().next() {
        Some("echoed") => Step::Echoed(id(), fields["duplicate"] == "true"),
        Some("acked") => Step::Acked(id()),
        _ => Step::Other(line.to_owned()),
    }
}

/// The bot process and its output, line by line.
struct Bot {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Bot {
    fn start(url: &str, state: &Path) -> Bot {
        let mut child = Command::new(env!("CARGO_BIN_EXE_echo-bot"))
            .args(["--server", url, "--user", BOT, "--state"])
            .arg(state)
            .env("ECHO_BOT_PASSWORD", BOT_PASSWORD)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Bot { child, lines }
    }

    /// Reads steps until `done` says so (given the steps so far).
    fn read_until(&self, steps: &mut Vec<Step>, done: impl Fn(&[Step]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(steps) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("bot output stopped ({e}); so far {steps:?}"));
            steps.push(parse(&line));
        }
    }

    /// SIGKILL, then every line it wrote before dying.
    fn kill(mut self, steps: &mut Vec<Step>) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            steps.push(parse(&line));
        }
    }
}

/// A failing test leaves no bot behind.
impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs blocking reads of the bot's output without stalling the server's
/// tasks on this runtime.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn acked(steps: &[Step]) -> BTreeSet<MessageId> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Acked(id) => Some(*id),
            _ => None,
        })
        .collect()
}

/// Whether every one of `all` was acknowledged, in the first run or in
/// these steps.
fn all_acked(all: &BTreeSet<MessageId>, first: &BTreeSet<MessageId>, steps: &[Step]) -> bool {
    let now = acked(steps);
    all.iter().all(|id| first.contains(id) || now.contains(id))
}

fn handled(steps: &[Step]) -> BTreeSet<MessageId> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Acked(id) | Step::Echoed(id, _) => Some(*id),
            Step::Other(_) => None,
        })
        .collect()
}

async fn connect(session: &Session) -> Connection {
    let mut conn = session
        .connect(
            DeviceId::new_random(),
            std::sync::Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, conn.next_event()).await.unwrap() {
            Some(ClientEvent::Synced { .. }) => return conn,
            Some(_) => {}
            None => panic!("closed: {}", conn.closed().await),
        }
    }
}

/// Sends "message N" for each N of `numbers`, noting their ids in `sent`.
async fn send_numbered(
    conn: &Connection,
    channel: chat_client::ChannelId,
    numbers: std::ops::Range<u32>,
    sent: &mut BTreeSet<MessageId>,
) {
    for i in numbers {
        let r = conn.send(channel, format!("message {i}")).await.unwrap();
        sent.insert(r.message_id);
    }
}

/// Every message of the channel, oldest first.
async fn whole_history(
    session: &Session,
    channel: chat_client::ChannelId,
) -> Vec<chat_client::Message> {
    let mut all = Vec::new();
    let mut after = MessageId(0);
    loop {
        let query = HistoryQuery {
            after: Some(after),
            limit: Some(500),
            ..HistoryQuery::default()
        };
        let page = session.history(channel, &query).await.unwrap();
        if let Some(last) = page.messages.last() {
            after = last.id;
        }
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_echo_bot_survives_its_own_kill_and_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("bot-state");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = Server::start(&listener, dir.path()).await;

    let client = ChatClient::new(&url).unwrap();
    let alice = client
        .signup("alice", "alice password", None)
        .await
        .unwrap();
    let bot = client.signup(BOT, BOT_PASSWORD, None).await.unwrap();
    alice.add_friend(bot.user_id()).await.unwrap();
    bot.add_friend(alice.user_id()).await.unwrap();
    let channel = alice.open_direct(bot.user_id()).await.unwrap();

    // A backlog of 300 messages waits for the bot.
    let alice_conn = connect(&alice).await;
    let mut sent = BTreeSet::new();
    send_numbered(&alice_conn, channel.id, 0..300, &mut sent).await;
    let all = sent.clone();

    // Run 1: killed (SIGKILL) a third of the way through.
    let run = Bot::start(&url, &state);
    let mut first = Vec::new();
    block(|| {
        // Right after an answer is stored and before its message is
        // acknowledged, if the kill is quick enough: the next run gets the
        // message again, and its answer is a duplicate the server drops.
        run.read_until(&mut first, |s| {
            s.iter().filter(|s| matches!(s, Step::Echoed(..))).count() >= 100
        });
        run.kill(&mut first);
    });
    let acked_first = acked(&first);
    eprintln!(
        "first run: {} acknowledged, {} answered before SIGKILL",
        acked_first.len(),
        first
            .iter()
            .filter(|s| matches!(s, Step::Echoed(..)))
            .count()
    );
    assert!(
        acked_first.len() < all.len(),
        "killed before the end of the backlog"
    );

    // Run 2: the rest of the backlog, and none of what was acknowledged.
    let run = Bot::start(&url, &state);
    let mut second = Vec::new();
    block(|| run.read_until(&mut second, |s| all_acked(&all, &acked_first, s)));
    let again: Vec<_> = handled(&second)
        .intersection(&acked_first)
        .copied()
        .collect();
    assert!(
        again.is_empty(),
        "acknowledged before the kill, delivered again: {again:?}"
    );
    // Answered but not acknowledged before the kill: delivered again, and
    // answered again with the same key, which the server had already.
    let answered_first: BTreeSet<MessageId> = first
        .iter()
        .filter_map(|s| match s {
            Step::Echoed(id, _) => Some(*id),
            _ => None,
        })
        .collect();
    for step in &second {
        if let Step::Echoed(id, duplicate) = step {
            assert_eq!(
                *duplicate,
                answered_first.contains(id),
                "{id}: an answer is new exactly when it was not given before the kill"
            );
        }
    }

    // The server restarts under the bot; the bot reconnects by itself.
    server.stop().await;
    let server = Server::start(&listener, dir.path()).await;
    send_numbered(&alice_conn, channel.id, 300..350, &mut sent).await;
    let all = sent.clone();
    block(|| run.read_until(&mut second, |s| all_acked(&all, &acked_first, s)));

    // Nothing answered twice: one answer per message in the history, with
    // its text.
    let history = whole_history(&alice, channel.id).await;
    let answers: Vec<&str> = history
        .iter()
        .filter(|m| m.sender == bot.user_id())
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(answers.len(), 350, "one answer per message");
    let texts: BTreeSet<&str> = answers.iter().copied().collect();
    assert_eq!(texts.len(), 350, "no message answered twice");
    assert!((0..350).all(|i| texts.contains(format!("message {i}").as_str())));
    let again: Vec<_> = handled(&second)
        .intersection(&acked_first)
        .copied()
        .collect();
    assert!(
        again.is_empty(),
        "delivered again after the restart: {again:?}"
    );

    let mut rest = Vec::new();
    block(|| run.kill(&mut rest));
    alice_conn.close().await;
    server.stop().await;
}
