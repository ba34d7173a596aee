//! The network edge of the real binary under a lowered open-file limit:
//! idle sockets, half request heads and half upgrades are closed by the
//! timeouts; an attacker at its per-address cap does not keep others out;
//! accept errors (out of descriptors) never stop the server; accepted
//! sockets have TCP_NODELAY; password hashing stays within its pool; the
//! data directory is private.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chat_client::ChatClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod common;

use common::{connect_synced, free_port};

/// The binary, with `ulimit -n nofile` applied in a shell before exec.
struct Server {
    child: Child,
    port: u16,
    base: String,
    _data: tempfile::TempDir,
}

impl Server {
    fn spawn(nofile: u32, extra: &[&str]) -> Server {
        let data = tempfile::tempdir().unwrap();
        Self::spawn_in(nofile, data, "data", extra)
    }

    fn spawn_in(nofile: u32, data: tempfile::TempDir, sub: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path().join(sub))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Server {
            child,
            port,
            base: format!("http://127.0.0.1:{port}"),
            _data: data,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_healthy(&mut self) {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("server exited at start: {status}");
            }
            if healthz(&self.base, [127, 0, 0, 1]).await == Some(200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("server never became healthy");
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server exited"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /healthz` from source address `from`, on a fresh connection.
async fn healthz(base: &str, from: [u8; 4]) -> Option<u16> {
    let client = reqwest::Client::builder()
        .local_address(IpAddr::from(from))
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = client.get(format!("{base}/healthz")).send().await.ok()?;
    Some(resp.status().as_u16())
}

/// A TCP connection to `to` from source address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    socket.connect(to).await
}

/// Reads until the server closes the connection; fails after `within`.
async fn closed_by_server(stream: &mut TcpStream, within: Duration) {
    let mut buf = [0u8; 4096];
    let end = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the server did not close the connection");
}

/// What an idle or slow client sends: nothing, half a head, half an upgrade.
const HALF_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
const HALF_UPGRADE: &[u8] = b"GET /v1/ws?device=7d3c5b7e-0000-4000-8000-000000000001 HTTP/1.1\r\n\
Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n";

#[tokio::test]
async fn idle_and_half_sent_sockets_are_closed_and_others_still_get_in() {
    // 1 s to send a head; at most 60 sockets from one address; the
    // socket cap from the open-file limit (512 less the store's share and
    // the reserve: 304).
    let mut server = Server::spawn(
        512,
        &[
            "--header-timeout-secs",
            "1",
            "--max-connections-per-address",
            "60",
        ],
    );
    server.wait_healthy().await;
    let addr = server.addr();

    // Three attackers, each at its cap: idle sockets, half request heads,
    // half upgrades. 180 sockets held at once.
    let mut held = Vec::new();
    for (from, payload) in [
        ([127, 0, 0, 2], &b""[..]),
        ([127, 0, 0, 3], HALF_HEAD),
        ([127, 0, 0, 4], HALF_UPGRADE),
    ] {
        for _ in 0..60 {
            let mut s = connect_from(from, addr).await.unwrap();
            s.write_all(payload).await.unwrap();
            held.push(s);
        }
    }
    // The 61st from an attacker's address is closed at once.
    let mut extra = connect_from([127, 0, 0, 2], addr).await.unwrap();
    closed_by_server(&mut extra, Duration::from_secs(5)).await;

    // A new client from elsewhere is served meanwhile, and can sign up,
    // log in and chat.
    assert_eq!(healthz(&server.base, [127, 0, 0, 1]).await, Some(200));
    let http = ChatClient::new(&server.base).unwrap();
    let alice = http.signup("alice", "alice-password", None).await.unwrap();
    let conn = connect_synced(&alice).await;

    // Every held socket is closed by the header timeout.
    for s in &mut held {
        closed_by_server(s, Duration::from_secs(10)).await;
    }
    // And the attackers' addresses may connect again.
    assert_eq!(healthz(&server.base, [127, 0, 0, 2]).await, Some(200));
    conn.close().await;
    server.assert_running();
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test]
async fn out_of_descriptors_the_server_backs_off_and_keeps_accepting() {
    // Caps above the open-file limit on purpose: accept() itself fails
    // with EMFILE once the process has no descriptor left.
    let mut server = Server::spawn(
        128,
        &[
            "--memory",
            "--header-timeout-secs",
            "2",
            "--max-open-connections",
            "10000",
            "--max-connections-per-address",
            "0",
        ],
    );
    server.wait_healthy().await;
    let addr = server.addr();
    let mut held = Vec::new();
    for i in 0..300u32 {
        let from = [127, 0, 1, (i % 200 + 1) as u8];
        held.push(connect_from(from, addr).await.unwrap());
    }
    // Out of descriptors now: the accept loop pauses between tries rather
    // than spinning on EMFILE (it would burn a whole core).
    let ticks = cpu_ticks(server.pid());
    let start = Instant::now();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let used = cpu_ticks(server.pid()) - ticks;
    let elapsed_ticks = start.elapsed().as_secs_f64() * 100.0; // USER_HZ
    assert!(
        (used as f64) < elapsed_ticks * 0.5,
        "the server used {used} of {elapsed_ticks:.0} ticks while out of descriptors"
    );
    server.assert_running();
    // The held sockets time out, the backlog drains, and a new client is
    // served: the server never stopped accepting.
    for s in &mut held {
        closed_by_server(s, Duration::from_secs(30)).await;
    }
    assert_eq!(healthz(&server.base, [127, 0, 0, 1]).await, Some(200));
    server.assert_running();
}

#[tokio::test]
async fn a_trickled_request_body_is_cut_at_the_request_timeout() {
    let mut server = Server::spawn(256, &["--memory", "--request-timeout-secs", "1"]);
    server.wait_healthy().await;
    let mut s = connect_from([127, 0, 0, 1], server.addr()).await.unwrap();
    s.write_all(
        b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
Content-Length: 100\r\n\r\n{\"username\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"unavailable\""), "{answer}");
    server.assert_running();
}

/// The TCP connections between this process and `port`, as the inodes of
/// the sockets on `pid`'s side.
fn socket_inodes(pid: u32, local_port: Option<u16>, remote_port: Option<u16>) -> Vec<u64> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
            let established = f[3] == "01";
            let local_ok = local_port.is_none_or(|p| port(f[1]) == Some(p));
            let remote_ok = remote_port.is_none_or(|p| port(f[2]) == Some(p));
            (established && local_ok && remote_ok).then(|| f[9].parse().ok())?
        })
        .collect()
}

/// `pid`'s descriptors of the sockets with these inodes, duplicated into
/// this process (pidfd_getfd: the very sockets, not copies of their state).
fn sockets_of(pid: u32, inodes: &[u64]) -> Vec<OwnedFd> {
    let pidfd = rustix::process::pidfd_open(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::PidfdFlags::empty(),
    )
    .unwrap();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy().into_owned();
        let Some(inode) = link
            .strip_prefix("socket:[")
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if inodes.contains(&inode) {
            let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
            found.push(
                rustix::process::pidfd_getfd(
                    pidfd.as_fd(),
                    fd,
                    rustix::process::PidfdGetfdFlags::empty(),
                )
                .unwrap(),
            );
        }
    }
    found
}

#[tokio::test]
async fn accepted_sockets_and_the_sdk_s_sockets_have_tcp_nodelay() {
    let mut server = Server::spawn(1024, &["--memory"]);
    server.wait_healthy().await;
    let http = ChatClient::new(&server.base).unwrap();
    let alice = http.signup("alice", "alice-password", None).await.unwrap();
    let conn = connect_synced(&alice).await;
    // A raw connection that has sent nothing yet: the option is set at
    // accept, before any request.
    let raw = TcpStream::connect(server.addr()).await.unwrap();
    let raw_port = raw.local_addr().unwrap().port();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // On the server's side: every accepted socket (the SDK's HTTP
    // connection, its WebSocket, the raw one).
    let accepted = socket_inodes(server.pid(), Some(server.port), None);
    let fds = sockets_of(server.pid(), &accepted);
    assert!(fds.len() >= 3, "found {} accepted sockets", fds.len());
    for fd in &fds {
        assert!(rustix::net::sockopt::tcp_nodelay(fd).unwrap());
    }
    let raw_side = socket_inodes(server.pid(), Some(server.port), Some(raw_port));
    assert_eq!(sockets_of(server.pid(), &raw_side).len(), 1);

    // On this side: the SDK's WebSocket and HTTP sockets.
    let me = std::process::id();
    let mine = socket_inodes(me, None, Some(server.port));
    let ours: Vec<OwnedFd> = sockets_of(me, &mine)
        .into_iter()
        .filter(|fd| {
            let local = rustix::net::getsockname(fd).unwrap();
            SocketAddr::try_from(local).map(|a| a.port()).ok() != Some(raw_port)
        })
        .collect();
    assert!(ours.len() >= 2, "found {} SDK sockets", ours.len());
    for fd in &ours {
        assert!(rustix::net::sockopt::tcp_nodelay(fd).unwrap());
    }
    drop(raw);
    conn.close().await;
}

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_burst_of_failed_logins_stays_within_the_hashing_pool() {
    // The default Argon2 cost (19 MiB, two passes): what users get.
    let mut server = Server::spawn(
        1024,
        &[
            "--memory",
            "--hash-workers",
            "2",
            "--hash-queue",
            "8",
            "--auth-per-address-per-minute",
            "0",
            "--login-per-username-per-minute",
            "0",
        ],
    );
    server.wait_healthy().await;
    let http = ChatClient::new(&server.base).unwrap();
    http.signup("alice", "alice-password", None).await.unwrap();
    let threads_before = threads(server.pid());
    let rss_before = rss_kib(server.pid());

    let client = reqwest::Client::new();
    let attempts = (0..64).map(|i| {
        let client = client.clone();
        let url = format!("{}/v1/login", server.base);
        async move {
            let user = if i % 2 == 0 { "alice" } else { "nobody" };
            client
                .post(url)
                .json(&serde_json::json!({"username": user, "password": "wrong-password"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(attempts).await;
    let refused = statuses.iter().filter(|&&s| s == 503).count();
    assert!(
        statuses.iter().all(|&s| s == 401 || s == 503),
        "{statuses:?}"
    );
    assert!(refused > 0, "a queue of 8 and 2 workers cannot hold 64");

    // At most 2 hashes run at once (the in-process tests read the exact
    // peak); their threads come from tokio's blocking pool, which may start
    // a fresh thread while one that just finished a hash is not idle yet,
    // so allow one more per worker. Without the pool, every attempt took a
    // thread of its own.
    let threads_after = threads(server.pid());
    assert!(
        threads_after <= threads_before + 4,
        "threads grew from {threads_before} to {threads_after}"
    );
    // Two 19 MiB working memories at most, not one per attempt.
    let grown = rss_kib(server.pid()).saturating_sub(rss_before);
    assert!(grown < 80 * 1024, "RSS grew by {grown} KiB");
    // The real user still gets in.
    http.login("alice", "alice-password").await.unwrap();
}

#[tokio::test]
async fn the_data_directory_and_everything_in_it_are_private() {
    let data = tempfile::tempdir().unwrap();
    let root = data.path().join("nested/data");
    let mut server = Server::spawn_in(1024, data, "nested/data", &[]);
    server.wait_healthy().await;
    let http = ChatClient::new(&server.base).unwrap();
    let alice = http.signup("alice", "alice-password", None).await.unwrap();
    let notes = alice.create_group("notes", &[]).await.unwrap();
    let conn = connect_synced(&alice).await;
    conn.send(notes.channel.id, "private").await.unwrap();
    conn.close().await;

    use std::os::unix::fs::PermissionsExt;
    let mut checked = 0;
    let mut stack = vec![root.clone()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "{}", path.display());
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else {
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        checked += 1;
    }
    assert!(checked > 10, "only {checked} paths: is the store there?");
    assert!(root.join("token.secret").exists());
    server.assert_running();
}

#[test]
fn an_open_file_limit_too_small_for_the_store_and_sockets_is_refused_at_start() {
    // 128 descriptors: the embedded store's share (32 + 64) and the
    // reserve (64 + 16 for push) leave nothing for sockets.
    let data = tempfile::tempdir().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 128 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("open-file limit (128)"), "{stderr}");
}
