//! The lean load connection: a bare tokio-tungstenite stream over a TCP
//! socket bound to a chosen loopback source address, small buffers, and the
//! chat protocol's frames from `chat_core::protocol`. No per-connection task
//! beyond the one that drives it, no reconnect logic, no cursor store.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use chat_core::protocol::{ClientFrame, Request, ServerFrame, Welcome};
use chat_core::{ChannelId, ClientMsgId, DeviceId, Seq};
use futures::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// One load connection.
pub type Ws = WebSocketStream<TcpStream>;

/// WebSocket read buffer per load connection, bytes (the library default is
/// 128 KiB, which thousands of connections cannot afford).
pub const READ_BUFFER: usize = 4 * 1024;
/// Bytes gathered before a write reaches the socket (frames fed in a batch go
/// out in one write; a flush always writes).
pub const WRITE_BUFFER: usize = 4 * 1024;

/// A failure to open or use a load connection.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The TCP connection (or binding its source address) failed.
    #[error("TCP connect to {addr} failed: {source}")]
    Tcp {
        /// The server address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A step did not finish in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The HTTP upgrade failed.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(String),
    /// The server closed the connection (with a code from
    /// `chat_core::protocol::close`, or 1006 when it just went away).
    #[error("server closed the connection with code {code}: {reason}")]
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// The server sent something unexpected.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ConnError {
    /// The close code, if the server closed the connection.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ConnError::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again (after a pause) can succeed: timeouts, TCP
    /// errors, and close codes that ask for a reconnect. 4101 (too many
    /// connections for the user) counts too: it clears once the server has
    /// noticed the user's previous connections are gone.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnError::Closed { code, .. } => {
                chat_core::protocol::close::should_reconnect(*code)
                    || *code == chat_core::protocol::close::TOO_MANY_CONNECTIONS
            }
            ConnError::Protocol(_) => false,
            _ => true,
        }
    }
}

/// The WebSocket configuration of every load connection.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(4 << 20)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Opens a TCP connection from `source` (any address when `None`) to `addr`
/// and upgrades it to a WebSocket at `url` (a full `ws://` URL with query).
pub async fn open_ws(
    addr: SocketAddr,
    source: Option<IpAddr>,
    url: &str,
    timeout: Duration,
) -> Result<Ws, ConnError> {
    let tcp_err = |source| ConnError::Tcp { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(tcp_err)?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).map_err(tcp_err)?;
    }
    let stream = tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| ConnError::Timeout("TCP connect"))?
        .map_err(tcp_err)?;
    stream.set_nodelay(true).map_err(tcp_err)?;
    let (ws, _response) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())),
    )
    .await
    .map_err(|_| ConnError::Timeout("WebSocket handshake"))?
    .map_err(|e| ConnError::Handshake(e.to_string()))?;
    Ok(ws)
}

/// The URL of the chat WebSocket for one device.
pub fn chat_url(ws_url: &str, device: DeviceId, token: &str) -> String {
    let sep = if ws_url.contains('?') { '&' } else { '?' };
    format!(
        "{ws_url}{sep}device={device}&token={token}&v={}",
        chat_core::protocol::PROTOCOL_VERSION
    )
}

/// Opens an authenticated chat connection and waits for its `welcome`.
pub async fn chat_connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    url: &str,
    timeout: Duration,
) -> Result<(Ws, Welcome), ConnError> {
    let mut ws = open_ws(addr, source, url, timeout).await?;
    let welcome = tokio::time::timeout(timeout, async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Text(text))) => {
                    return match serde_json::from_str::<ServerFrame>(&text) {
                        Ok(ServerFrame::Welcome(w)) => Ok(w),
                        Ok(_) => Err(ConnError::Protocol("first frame is not welcome".into())),
                        Err(e) => Err(ConnError::Protocol(format!("bad first frame: {e}"))),
                    };
                }
                Some(Ok(WsMessage::Close(frame))) => return Err(closed(frame)),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ConnError::Handshake(e.to_string())),
                None => return Err(closed(None)),
            }
        }
    })
    .await
    .map_err(|_| ConnError::Timeout("welcome"))??;
    Ok((ws, welcome))
}

/// A close frame (or its absence) as a [`ConnError::Closed`].
pub fn closed(frame: Option<tungstenite::protocol::CloseFrame>) -> ConnError {
    match frame {
        Some(f) => ConnError::Closed {
            code: f.code.into(),
            reason: f.reason.to_string(),
        },
        None => ConnError::Closed {
            code: 1006,
            reason: "connection ended without a close frame".into(),
        },
    }
}

/// The heartbeat request (its reply is ignored, so one id serves all).
pub fn heartbeat_frame() -> WsMessage {
    WsMessage::Text(Utf8Bytes::from_static(r#"{"id":"h","type":"heartbeat"}"#))
}

/// A `send` request.
pub fn send_frame(
    req_id: String,
    channel: ChannelId,
    client_msg_id: &str,
    content: String,
) -> WsMessage {
    // The ids the tool makes are always valid; an invalid one would be
    // refused by the server and counted as a failed send.
    let client_msg_id =
        ClientMsgId::new(client_msg_id).unwrap_or_else(|_| ClientMsgId::new_random());
    encode(&ClientFrame {
        id: req_id,
        request: Request::Send {
            channel,
            client_msg_id,
            content,
            reply_to: None,
            attachments: Vec::new(),
        },
    })
}

/// A `sync` request after inbox position `after`, pages of `limit`.
pub fn sync_frame(req_id: String, after: Seq, limit: u32) -> WsMessage {
    encode(&ClientFrame {
        id: req_id,
        request: Request::Sync {
            after: Some(after),
            limit: Some(limit),
        },
    })
}

fn encode(frame: &ClientFrame) -> WsMessage {
    WsMessage::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

/// Decodes a server frame; `None` for anything that is not valid JSON of a
/// known frame.
pub fn decode(text: &str) -> Option<ServerFrame> {
    serde_json::from_str(text).ok()
}
