//! The OpenAPI description: generated from the handlers' annotations (the
//! routes are registered from them), served at `/v1/openapi.json`, and
//! committed as `docs/openapi.json`, which must equal the generated one.
//! After changing the API: `UPDATE_OPENAPI=1 cargo test -p chat-server
//! --test openapi` rewrites the file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn generated() -> String {
    let mut text = serde_json::to_string_pretty(&chat_server::openapi()).unwrap();
    text.push('\n');
    text
}

#[test]
fn the_committed_description_is_the_generated_one() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let generated = generated();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is not the generated description: run \
         UPDATE_OPENAPI=1 cargo test -p chat-server --test openapi"
    );
}

#[test]
fn every_api_operation_is_described() {
    let doc: serde_json::Value = serde_json::from_str(&generated()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    // The table of docs/protocol.md, less the WebSocket upgrade.
    for (path, method) in [
        ("/v1/signup", "post"),
        ("/v1/login", "post"),
        ("/v1/refresh", "post"),
        ("/v1/logout", "post"),
        ("/v1/logout/all", "post"),
        ("/v1/me", "get"),
        ("/v1/me", "patch"),
        ("/v1/me/privacy", "get"),
        ("/v1/me/privacy", "patch"),
        ("/v1/users/{id}", "get"),
        ("/v1/users/by-name/{username}", "get"),
        ("/v1/friends", "get"),
        ("/v1/friends/requests", "get"),
        ("/v1/friends/{id}", "put"),
        ("/v1/friends/{id}", "delete"),
        ("/v1/channels", "get"),
        ("/v1/channels/direct", "post"),
        ("/v1/channels/{id}", "get"),
        ("/v1/channels/{id}/messages", "get"),
        ("/v1/groups", "post"),
        ("/v1/groups/{id}/members/{user}", "put"),
        ("/v1/groups/{id}/members/{user}", "delete"),
        ("/v1/invitations", "get"),
        ("/v1/invitations/{id}", "put"),
        ("/v1/invitations/{id}", "delete"),
        ("/v1/devices/{id}", "put"),
        ("/v1/presence", "get"),
        ("/v1/route", "get"),
        ("/v1/attachments", "post"),
        ("/v1/attachments/{id}", "get"),
        ("/v1/attachments/{id}/thumbnail", "get"),
        ("/v1/search", "get"),
        ("/healthz", "get"),
        ("/metrics", "get"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{method} {path} is not described");
        let public = [
            "/v1/signup",
            "/v1/login",
            "/v1/refresh",
            "/healthz",
            "/metrics",
        ];
        assert_eq!(
            op["security"].is_array(),
            !public.contains(&path),
            "{method} {path}: bearer security"
        );
    }
}

#[tokio::test]
async fn the_server_serves_it_and_answers_unknown_paths_in_json() {
    let ts = start(test_config()).await;
    let served: serde_json::Value = reqwest::get(format!("{}/v1/openapi.json", ts.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let generated: serde_json::Value = serde_json::from_str(&generated()).unwrap();
    assert_eq!(served, generated);
    let missing = reqwest::get(format!("{}/v1/nothing-here", ts.http))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let body: chat_core::api::ErrorBody = missing.json().await.unwrap();
    assert_eq!(body.error.code, chat_core::protocol::ErrorCode::NotFound);
    ts.stop().await;
}
