//! The `Origin` check of the WebSocket upgrade.
//!
//! A browser sends `Origin` with every WebSocket handshake, and a page of
//! any site can open one to this server with the user's cookies or a token
//! it got hold of; native clients send no `Origin`. So: no `Origin`, an
//! origin equal to the server's own (`Host`), or one listed in
//! [`ServerConfig::allowed_origins`](crate::ServerConfig) is let through;
//! anything else is refused with HTTP 403 `forbidden` before the upgrade.

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chat_core::protocol::ErrorCode;

use crate::http::ApiError;
use crate::server::{err, ChatServer};

/// An origin reduced to what identifies it: scheme, host, port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (`[v6]:port` for IPv6), lowercasing the host.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        (format!("[{}]", v6.to_ascii_lowercase()), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p.parse().ok()?)),
            None => (authority.to_ascii_lowercase(), None),
        }
    };
    (!host.is_empty() && host != "[]").then_some((host, port))
}

fn parse_origin(value: &str) -> Option<Origin> {
    let (scheme, authority) = value.trim().split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (host, port) = split_authority(authority.trim_end_matches('/'))?;
    let port = port.or_else(|| default_port(&scheme))?;
    Some(Origin { scheme, host, port })
}

/// One entry of the allowed-origins list: `*` or `scheme://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Allowed {
    Any,
    Exactly(Origin),
}

/// Parses an allowed-origins entry, with the reason it is not one.
pub(crate) fn parse_allowed(entry: &str) -> Result<Allowed, String> {
    if entry.trim() == "*" {
        return Ok(Allowed::Any);
    }
    parse_origin(entry).map(Allowed::Exactly).ok_or_else(|| {
        format!("allowed origin {entry:?} is not `*` or scheme://host[:port] (http or https)")
    })
}

/// Whether a request with these headers may open a WebSocket.
fn allowed(origin: Option<&str>, host: Option<&str>, list: &[String]) -> bool {
    let Some(origin) = origin else {
        return true; // not a browser
    };
    if list
        .iter()
        .any(|e| matches!(parse_allowed(e), Ok(Allowed::Any)))
    {
        return true;
    }
    // "null" (sandboxed frames, file://) and anything unparsable match nothing.
    let Some(origin) = parse_origin(origin) else {
        return false;
    };
    let same_origin = host.and_then(split_authority).is_some_and(|(h, p)| {
        h == origin.host && p.or_else(|| default_port(&origin.scheme)) == Some(origin.port)
    });
    same_origin
        || list
            .iter()
            .any(|e| parse_allowed(e).is_ok_and(|a| a == Allowed::Exactly(origin.clone())))
}

/// Middleware on `/v1/ws`: refuses a disallowed `Origin` with 403.
pub(crate) async fn check(State(server): State<ChatServer>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let origin = headers.get(ORIGIN).map(|v| v.to_str().unwrap_or(""));
    let host = headers.get(HOST).and_then(|v| v.to_str().ok());
    if allowed(origin, host, &server.config().allowed_origins) {
        return next.run(req).await;
    }
    ApiError(err(
        ErrorCode::Forbidden,
        "this origin may not open a WebSocket here (see --allowed-origin)",
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn native_clients_and_same_origin_pass_others_need_listing() {
        assert!(allowed(None, Some("chat.example:8080"), &[]));
        assert!(allowed(
            Some("http://chat.example:8080"),
            Some("chat.example:8080"),
            &[]
        ));
        assert!(allowed(
            Some("https://Chat.Example"),
            Some("chat.example:443"),
            &[]
        ));
        assert!(!allowed(
            Some("https://evil.example"),
            Some("chat.example"),
            &[]
        ));
        assert!(!allowed(Some("null"), Some("chat.example"), &[]));
        assert!(!allowed(
            Some("http://chat.example:8081"),
            Some("chat.example:8080"),
            &[]
        ));
        let app = list(&["https://app.example", "http://[::1]:3000"]);
        assert!(allowed(Some("https://app.example:443"), None, &app));
        assert!(allowed(Some("http://[::1]:3000"), None, &app));
        assert!(!allowed(Some("http://app.example"), None, &app));
        assert!(allowed(
            Some("https://anything.example"),
            None,
            &list(&["*"])
        ));
        assert!(allowed(Some("null"), None, &list(&["*"])));
    }

    #[test]
    fn allowed_entries_are_checked() {
        assert_eq!(parse_allowed("*"), Ok(Allowed::Any));
        assert!(parse_allowed("https://app.example:8443").is_ok());
        assert!(parse_allowed("app.example").is_err());
        assert!(parse_allowed("https://app.example/path").is_err());
        assert!(
            parse_allowed("ftp://app.example").is_err(),
            "no default port"
        );
        assert!(parse_allowed("https://user@app.example").is_err());
        assert!(parse_allowed("https://app.example:99999").is_err());
    }
}
