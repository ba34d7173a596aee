//! Whole HTTP requests through the server's real router (in-memory
//! backends): method, path, query, headers and body from the input. No
//! request may panic a handler or answer 500.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Method, Request};
use chat_server::{ChatServer, ServerConfig};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

struct World {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    token: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let config = ServerConfig {
            token_secret: vec![7; 32].into(),
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..ServerConfig::default()
        };
        let server = runtime
            .block_on(ChatServer::builder(config).build())
            .expect("a server");
        let router = server.router();
        // One real user, so authenticated paths get past the token check.
        let token = runtime.block_on(async {
            let req = Request::post("/v1/signup")
                .header("content-type", "application/json")
                .body(Body::from(
                    r#"{"username":"fuzzer","password":"fuzzer-password"}"#,
                ))
                .expect("a request");
            let resp = router.clone().oneshot(req).await.expect("infallible");
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("a body");
            let auth: chat_core::api::AuthResponse =
                serde_json::from_slice(&body).expect("an auth response");
            auth.token
        });
        World {
            runtime,
            router,
            token,
        }
    })
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

fuzz_target!(|data: &[u8]| {
    let world = world();
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    // "path\nbody": the path (with its query) on the first line.
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let mut req = Request::builder()
        .method(METHODS[usize::from(flags) % METHODS.len()].clone())
        .uri(target)
        .header("content-type", "application/json");
    if flags & 0x80 != 0 {
        req = req.header("authorization", format!("Bearer {}", world.token));
    }
    // Not the WebSocket upgrade: it needs a real connection.
    if target.starts_with("/v1/ws") {
        return;
    }
    let Ok(req) = req.body(Body::from(body.to_vec())) else {
        return;
    };
    let status = world.runtime.block_on(async {
        let resp = world.router.clone().oneshot(req).await.expect("infallible");
        resp.status()
    });
    assert_ne!(status.as_u16(), 500, "a request answered 500");
});
