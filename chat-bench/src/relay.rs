//! The baseline: a minimal WebSocket relay on the same stack
//! (tokio-tungstenite, the library under axum's WebSocket) with none of the
//! chat server's logic: no JSON, no authentication, no storage, no ids, no
//! presence. It does only what any relay must: route a frame to the
//! recipient's connection and acknowledge it to the sender, with the same
//! shape as the chat server (a reader per connection, a writer task draining
//! a bounded queue, 8 KiB buffers).
//!
//! Its protocol, all text frames:
//!
//! * connect to `ws://ADDR/?id=<u32>`; the relay answers `w` once registered;
//! * client: `<to> <request id> <payload>`;
//! * relay to the recipient: `m <payload>`; to the sender: `a <request id>`,
//!   or `e <request id>` when no connection has id `<to>`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Frames queued for one connection before further frames to it are dropped
/// (the chat server's default outbound queue).
const OUTBOUND: usize = 256;

type Peers = Arc<RwLock<HashMap<u32, mpsc::Sender<WsMessage>>>>;

/// A running relay on 127.0.0.1 (an ephemeral port).
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Relay {
    /// Starts a relay on `127.0.0.1:0` in this process.
    pub async fn start() -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let peers: Peers = Arc::default();
        let stop = shutdown.clone();
        let tracker = tasks.clone();
        tasks.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    _ = stop.cancelled() => break,
                    a = listener.accept() => a,
                };
                let Ok((stream, _)) = accepted else {
                    // Out of descriptors or similar: pause rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tracker.spawn(connection(stream, peers.clone(), stop.clone()));
            }
        });
        Ok(Relay {
            addr,
            shutdown,
            tasks,
        })
    }

    /// The relay's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL connection `id` opens.
    pub fn url(&self, id: u32) -> String {
        format!("ws://{}/?id={id}", self.addr)
    }

    /// Stops accepting, closes every connection and waits (briefly) for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.tasks.wait()).await;
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_write_buffer_size(2 << 20)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

async fn connection(stream: TcpStream, peers: Peers, stop: CancellationToken) {
    let mut id = None;
    // The error type is tungstenite's; this callback never returns it.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        id = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("id=")))
            .and_then(|v| v.parse::<u32>().ok());
        Ok(resp)
    };
    let Ok(ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config())).await
    else {
        return;
    };
    let Some(id) = id else { return };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<WsMessage>(OUTBOUND);
    peers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let _ = tx.try_send(WsMessage::Text(Utf8Bytes::from_static("w")));
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = stream.next() => m,
        };
        let text = match msg {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        let mut parts = text.splitn(3, ' ');
        let (Some(to), Some(req), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let target = to.parse::<u32>().ok().and_then(|to| {
            peers
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&to)
                .cloned()
        });
        let answer = match target {
            Some(peer) => {
                // Like the chat server, never wait on a recipient: a full
                // queue drops the frame (the load tool counts it lost).
                let _ = peer.try_send(WsMessage::Text(format!("m {payload}").into()));
                format!("a {req}")
            }
            None => format!("e {req}"),
        };
        if tx.send(WsMessage::Text(answer.into())).await.is_err() {
            break;
        }
    }
    peers.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
    drop(tx);
    let _ = writer.await;
}

/// A frame from the relay, as the load client reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayFrame<'a> {
    /// Registered.
    Welcome,
    /// The request with this id was relayed.
    Ack(&'a str),
    /// The request with this id named an unknown recipient.
    Error(&'a str),
    /// A relayed payload.
    Deliver(&'a str),
}

/// Parses a relay frame.
pub fn parse(text: &str) -> Option<RelayFrame<'_>> {
    let (kind, rest) = text.split_once(' ').unwrap_or((text, ""));
    match kind {
        "w" => Some(RelayFrame::Welcome),
        "a" => Some(RelayFrame::Ack(rest)),
        "e" => Some(RelayFrame::Error(rest)),
        "m" => Some(RelayFrame::Deliver(rest)),
        _ => None,
    }
}

/// The frame that relays `payload` to connection `to`.
pub fn send_frame(to: u32, req_id: &str, payload: &str) -> WsMessage {
    WsMessage::Text(format!("{to} {req_id} {payload}").into())
}
