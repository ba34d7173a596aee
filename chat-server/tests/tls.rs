//! TLS end to end: the server terminates TLS with a self-signed certificate
//! made here, and the SDK speaks https and wss to it, trusting that
//! certificate as a custom root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chat_client::{ChatClient, ClientError, ClientEvent, TlsOptions};
use chat_server::{ChatServer, ServerConfig, TlsConfig};
use common::*;
use tokio_util::sync::CancellationToken;

/// A certificate for `localhost` and 127.0.0.1, and its key, in PEM.
fn self_signed() -> (String, String) {
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    (cert.cert.pem(), cert.signing_key.serialize_pem())
}

/// A TLS server on 127.0.0.1:0; its base URL, as `https://localhost:PORT`.
async fn start_tls(cert: &str, key: &str) -> (ChatServer, String, CancellationToken) {
    let config = ServerConfig {
        tls: Some(TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap()),
        ..test_config()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = ServerConfig {
        public_http_url: Some(format!("https://localhost:{port}")),
        public_ws_url: Some(format!("wss://localhost:{port}/v1/ws")),
        ..config
    };
    let server = ChatServer::builder(config).build().await.unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(chat_server::serve(
        server.clone(),
        listener,
        shutdown.clone(),
    ));
    (server, format!("https://localhost:{port}"), shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_chats_over_https_and_wss_with_a_custom_root() {
    let (cert, key) = self_signed();
    let (_server, base, shutdown) = start_tls(&cert, &key).await;
    let tls = TlsOptions::empty().add_root_pem(cert.as_bytes()).unwrap();
    let client = ChatClient::with_tls(&base, tls).unwrap();
    let alice = client.signup("alice", "password123", None).await.unwrap();
    let bob = client.signup("bob", "password123", None).await.unwrap();
    make_friends(&alice, &bob).await;
    let channel = alice.open_direct(bob.user_id()).await.unwrap();
    // wss: route answers the wss URL; both connect and a message crosses.
    let a = connect_synced(&alice).await;
    let mut b = connect_synced(&bob).await;
    a.send(channel.id, "over TLS").await.unwrap();
    let got = next_event(&mut b, |e| matches!(e, ClientEvent::Message(_))).await;
    match got {
        ClientEvent::Message(d) => assert_eq!(d.message.content, "over TLS"),
        other => panic!("{other:?}"),
    }
    a.close().await;
    b.close().await;
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_refused_and_plain_http_gets_nothing() {
    let (cert, key) = self_signed();
    let (_server, base, shutdown) = start_tls(&cert, &key).await;
    // The default roots do not include a self-signed certificate.
    let client = ChatClient::new(&base).unwrap();
    match client.signup("carol", "password123", None).await {
        // Refused by the roots: a configuration to fix, not worth a retry.
        Err(e @ ClientError::Config(_)) => {
            let text = e.to_string().to_ascii_lowercase();
            assert!(text.contains("certificate"), "{text}");
            assert!(!e.is_retryable());
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    // Plain HTTP to the TLS port: no HTTP answer.
    let plain = base.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
    shutdown.cancel();
}

#[test]
fn a_key_that_is_no_key_is_a_clear_error() {
    let (cert, _) = self_signed();
    let e = TlsConfig::from_pem(cert.as_bytes(), b"not a key").unwrap_err();
    assert!(e.to_string().contains("private key"), "{e}");
    let e = TlsConfig::from_pem(b"", b"").unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
}
