//! Private engine processes for fault tests: a `nats-server`, `redis-server`
//! or `etcd` of a test's own, on a free loopback port with its own data
//! directory, that the test may kill (`SIGKILL`) and start again on the same
//! port. Never the shared services on the standard ports, which other tests
//! use.
//!
//! The binaries must be on `PATH` (Debian: `nats-server`, `redis-server`,
//! `etcd-server`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Which engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `nats-server -js`, JetStream on.
    Nats,
    /// `redis-server`, nothing kept on disk.
    Redis,
    /// A single-member `etcd`.
    Etcd,
}

/// A running (or stopped) private engine. Killed when dropped.
#[derive(Debug)]
pub struct Engine {
    kind: Kind,
    port: u16,
    /// Second port (etcd's peer port).
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl Engine {
    /// Starts an engine of `kind` and waits until it accepts connections.
    pub async fn start(kind: Kind) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "chat-engine-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut engine = Self {
            kind,
            port: free_port(),
            peer_port: free_port(),
            dir,
            child: None,
        };
        engine.restart().await?;
        Ok(engine)
    }

    /// The URL clients use: `nats://`, `redis://` or `http://` (etcd).
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
            Kind::Etcd => format!("http://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the engine with `SIGKILL`, as a crash would, and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the engine again (after [`kill`](Self::kill)) on the same
    /// port and data directory, and waits until it accepts connections.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(&self.dir);
                c
            }
            Kind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--dir")
                .arg(&self.dir);
                c
            }
            Kind::Etcd => {
                let client = format!("http://127.0.0.1:{}", self.port);
                let peer = format!("http://127.0.0.1:{}", self.peer_port);
                let mut c = Command::new("etcd");
                c.args(["--name", "test"])
                    .arg("--data-dir")
                    .arg(self.dir.join("etcd"))
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer])
                    .args(["--initial-advertise-peer-urls", &peer])
                    .args(["--initial-cluster", &format!("test={peer}")])
                    .args(["--log-level", "error"]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                // etcd accepts before it has a leader; give it a moment.
                if self.kind == Kind::Etcd {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "{:?} did not start on port {}",
                    self.kind, self.port
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
