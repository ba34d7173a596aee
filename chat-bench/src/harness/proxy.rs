//! A TCP proxy on loopback that the harness can cut and heal.
//!
//! Two uses: the cluster's front door (the load balancer in front of the
//! stateless HTTP API, round-robin over the nodes, skipping those that
//! refuse), and a node's private way to the bus broker, which a partition
//! cuts: every connection through it is closed and new ones are refused
//! until it heals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a connection to one backend may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct State {
    backends: Mutex<Vec<SocketAddr>>,
    next: AtomicUsize,
    cut: AtomicBool,
    /// Cancelled (and replaced) by a cut: ends every open connection.
    generation: Mutex<CancellationToken>,
}

/// A running proxy; stopped when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to one of
    /// `backends`, round-robin, trying the next when one refuses.
    pub async fn start(backends: Vec<SocketAddr>) -> std::io::Result<Self> {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into(), backends).await
    }

    /// Like [`start`](Self::start), listening on `ip` (a port of its own).
    pub async fn start_on(
        ip: std::net::IpAddr,
        backends: Vec<SocketAddr>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            backends: Mutex::new(backends),
            next: AtomicUsize::new(0),
            cut: AtomicBool::new(false),
            generation: Mutex::new(CancellationToken::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
        Ok(Self { addr, state, stop })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the backends (new connections only).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        if let Ok(mut b) = self.state.backends.lock() {
            *b = backends;
        }
    }

    /// The first backend, as `host:port` (empty if none).
    pub fn backend(&self) -> String {
        self.state
            .backends
            .lock()
            .ok()
            .and_then(|b| b.first().map(|a| a.to_string()))
            .unwrap_or_default()
    }

    /// Closes every connection through the proxy and refuses new ones
    /// until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        if let Ok(mut g) = self.state.generation.lock() {
            g.cancel();
            *g = CancellationToken::new();
        }
    }

    /// Accepts and forwards connections again.
    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else {
            // Out of file descriptors or the like: back off, go on.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if state.cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let token = match state.generation.lock() {
            Ok(g) => g.clone(),
            Err(_) => return,
        };
        tokio::spawn(forward(client, state.clone(), token));
    }
}

async fn forward(mut client: TcpStream, state: Arc<State>, token: CancellationToken) {
    let backends = state.backends.lock().map(|b| b.clone()).unwrap_or_default();
    if backends.is_empty() {
        return;
    }
    let first = state.next.fetch_add(1, Ordering::Relaxed);
    for i in 0..backends.len() {
        let backend = backends[(first + i) % backends.len()];
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await;
        let Ok(Ok(mut server)) = connected else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        tokio::select! {
            _ = token.cancelled() => {}
            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        }
        return;
    }
}
