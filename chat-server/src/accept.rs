//! The accept loop behind [`crate::serve`]: every accepted socket gets
//! `TCP_NODELAY`, counts against a total and a per-address cap, and is
//! served by hyper's HTTP/1 with a header-read timeout, a whole-request
//! timeout and a write-stall timeout; accept errors (out of file
//! descriptors) back off instead of spinning or ending the server.
//!
//! Why each limit exists (docs/protocol.md, "Connection limits"):
//!
//! - A socket that sends nothing, half a request head, or the head of an
//!   upgrade and no more is closed when `header_timeout` runs out: hyper's
//!   header-read timer runs from the moment the connection is ready to read
//!   a head, which is at accept and again after every answered request
//!   (so it is also the keep-alive idle timeout).
//! - A request whose head arrived but whose body trickles in, or whose
//!   handler does not finish, is answered `unavailable` after
//!   `request_timeout` and its connection closed.
//! - A peer that stops taking bytes while the server has some to write
//!   (a pipelining client that never reads, a WebSocket whose reader
//!   stalled) is cut after `write_stall_timeout`. This one holds after a
//!   WebSocket upgrade too: the socket carries it.
//! - The caps are checked before anything is read, and the permit travels
//!   with the socket into an upgraded WebSocket, so every open socket of
//!   this server counts, whatever it is doing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use chat_core::protocol::ErrorCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::http::ApiError;
use crate::server::{err, ChatServer};

/// Shortest and longest pause after an accept error that is not about one
/// connection (out of file descriptors, out of memory).
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Every open socket of one server, in total and by source address.
#[derive(Debug)]
pub(crate) struct ConnLimits {
    total: Arc<Semaphore>,
    capacity: usize,
    per_address: usize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// The share of the caps one socket holds; released when the socket closes.
#[derive(Debug)]
pub(crate) struct ConnPermit {
    _total: OwnedSemaphorePermit,
    address: IpAddr,
    limits: Arc<ConnLimits>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.address);
            }
        }
    }
}

/// The address a per-address cap counts by: an IPv4 address, or the /64
/// of an IPv6 address (one host's usual allocation, so that rotating
/// through its addresses gains nothing).
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ConnLimits {
    /// At most `total` sockets, and `per_address` from one address (0: no
    /// per-address cap).
    pub(crate) fn new(total: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(total)),
            capacity: total,
            per_address,
            by_address: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for a socket from `ip`, or `None` if a cap is reached.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<ConnPermit> {
        let address = address_key(ip);
        let total = self.total.clone().try_acquire_owned().ok()?;
        let mut map = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(address).or_insert(0);
        if self.per_address != 0 && *n >= self.per_address {
            return None;
        }
        *n += 1;
        drop(map);
        Some(ConnPermit {
            _total: total,
            address,
            limits: self.clone(),
        })
    }

    /// Sockets open now.
    pub(crate) fn open(&self) -> usize {
        self.capacity - self.total.available_permits()
    }
}

/// A socket that fails its writes once the peer has taken no bytes for
/// `stall` while there were some to write, and holds the socket's share
/// of the connection caps until it is dropped (which, after a WebSocket
/// upgrade, is when the session ends).
#[derive(Debug)]
pub(crate) struct Guarded<T> {
    io: T,
    stall: Duration,
    /// Armed while a write or flush is pending.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    _permit: ConnPermit,
}

impl<T> Guarded<T> {
    pub(crate) fn new(io: T, stall: Duration, permit: ConnPermit) -> Self {
        Self {
            io,
            stall,
            timer: None,
            _permit: permit,
        }
    }

    /// Turns a pending write into a timeout error once the stall timer
    /// runs out; clears the timer on progress.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.timer = None;
            return poll;
        }
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took no bytes within the write stall timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

/// Whether an accept error concerns only the connection being accepted
/// (retry at once) rather than the process (back off).
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Accepts until `shutdown`; never returns an error for a failed accept.
pub(crate) async fn run(
    server: ChatServer,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let cfg = server.config();
    let limits = server.inner.conn_limits.clone();
    let connections = TaskTracker::new();
    let stop_http = CancellationToken::new();
    let router = server.router();
    // The node may also stop by itself (see `ChatServer::advertise`).
    let stopped = server.shutdown_token();
    let mut backoff = BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = stopped.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                backoff = BACKOFF_MIN;
                pair
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // EMFILE / ENFILE / ENOMEM: the pending connection stays in
                // the backlog; try again once sockets have closed.
                server
                    .inner
                    .stats
                    .accept_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = stopped.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let Some(permit) = limits.admit(peer.ip()) else {
            // Closed before a byte is read: the cheapest answer there is.
            server
                .inner
                .stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        // Small frames (acks, events) must not wait for the peer's delayed
        // ACK (Nagle's algorithm adds ~40 ms to such exchanges).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let io = Guarded::new(stream, cfg.write_stall_timeout, permit);
        let serve = Served {
            peer,
            router: router.clone(),
            header_timeout: cfg.header_timeout,
            request_timeout: cfg.request_timeout,
            stop: stop_http.clone(),
        };
        let tls = cfg.tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve.run(io).await,
                // The handshake runs in the connection's own task, under
                // its own timeout, so a slow one holds up nobody else.
                Some(tls) => match tls.accept(io).await {
                    Ok(io) => serve.run(io).await,
                    Err(e) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                },
            }
        });
    }
    drop(listener);
    // Answer the requests in flight, close idle HTTP connections, and tell
    // every WebSocket session to go (the server's own shutdown).
    stop_http.cancel();
    connections.close();
    let drain = server.drain_timeout();
    let (_, waited) = tokio::join!(
        server.shutdown(),
        tokio::time::timeout(drain, connections.wait())
    );
    if waited.is_err() {
        tracing::warn!("drain timeout: some HTTP connections did not close in time");
    }
    Ok(())
}

/// What serving one connection needs besides its socket.
struct Served {
    peer: SocketAddr,
    router: axum::Router,
    header_timeout: Duration,
    request_timeout: Duration,
    stop: CancellationToken,
}

impl Served {
    /// Serves one connection (plain, or TLS after its handshake) with
    /// HTTP/1, upgrades included, until it closes.
    async fn run<IO>(self, io: IO)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Served {
            peer,
            router,
            header_timeout,
            request_timeout,
            stop,
        } = self;
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let call = router.clone().call(req);
            async move {
                match tokio::time::timeout(request_timeout, call).await {
                    Ok(response) => response,
                    Err(_) => {
                        let mut response = ApiError(err(
                            ErrorCode::Unavailable,
                            "the request did not complete in time",
                        ))
                        .into_response();
                        response.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                        Ok::<_, Infallible>(response)
                    }
                }
            }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .keep_alive(true);
        let conn = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                return;
            }
            _ = stop.cancelled() => conn.as_mut().graceful_shutdown(),
        }
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_per_address_and_in_total_and_release_on_drop() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).expect("first from a");
        let a2 = limits.admit(a).expect("second from a");
        assert!(limits.admit(a).is_none(), "a is at its per-address cap");
        let b1 = limits.admit(b).expect("b has its own count");
        assert!(limits.admit(b).is_none(), "the total cap is reached");
        assert_eq!(limits.open(), 3);
        drop(a1);
        assert!(limits.admit(a).is_some(), "a closed one, so may open one");
        drop((a2, b1));
        assert_eq!(limits.open(), 0, "every permit released");
        assert!(limits.by_address.lock().unwrap().is_empty());
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let z: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(x), address_key(y));
        assert_ne!(address_key(x), address_key(z));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(address_key(mapped), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
