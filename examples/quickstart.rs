//! The whole product in one process: a chat server on the embedded store,
//! and clients walking through one-to-one chat, a group, going offline,
//! syncing on a second device, and presence.
//!
//! ```sh
//! cargo run --example quickstart
//! ```

use std::sync::Arc;
use std::time::Duration;

use chat_client::{
    ChatClient, ClientEvent, ConnectOptions, Connection, DeviceId, MemoryCursorStore, Message,
    Session,
};
use chat_server::{
    CancellationToken, ChatServer, EmbeddedOptions, EmbeddedStore, ServerConfig, TokenSecret,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    // 1. A server on the embedded on-disk store, on a free local port.
    let data = tempfile::tempdir()?;
    let store = Arc::new(EmbeddedStore::open_async(data.path(), EmbeddedOptions::default()).await?);
    let config = ServerConfig {
        token_secret: TokenSecret::random(),
        // Presence quicker than the 5 s / 30 s defaults, so the demo is short.
        heartbeat_interval: Duration::from_millis(500),
        presence_timeout: Duration::from_secs(2),
        ..ServerConfig::default()
    };
    let server = ChatServer::builder(config).storage(store).build().await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(chat_server::serve(server, listener, shutdown.clone()));
    println!(
        "server listening on {url} (data in {})",
        data.path().display()
    );

    // 2. Three users sign up; Alice asks Bob to be friends and he accepts
    // (asking back is accepting).
    let http = ChatClient::new(&url)?;
    let alice = http
        .signup("alice", "alice-password", Some("Alice"))
        .await?;
    let bob = http.signup("bob", "bob-password", Some("Bob")).await?;
    let carol = http
        .signup("carol", "carol-password", Some("Carol"))
        .await?;
    alice.add_friend(bob.user_id()).await?;
    bob.add_friend(alice.user_id()).await?;
    println!("signed up alice, bob and carol; alice and bob are friends");

    // 3. One-to-one: Alice and Bob connect (their devices ask `route` for a
    // chat server) and talk.
    let mut bob_phone = connect(&bob, DeviceId::new_random()).await?;
    let mut alice_laptop = connect(&alice, DeviceId::new_random()).await?;
    let direct = alice.open_direct(bob.user_id()).await?;
    let receipt = alice_laptop.send(direct.id, "Hi Bob!").await?;
    println!(
        "alice sent 'Hi Bob!', stored as message {}",
        receipt.message_id
    );
    show("bob's phone", &next_message(&mut bob_phone).await?);
    bob_phone
        .send(direct.id, "Hi Alice, good to see you")
        .await?;
    show("alice's laptop", &next_message(&mut alice_laptop).await?);

    // 4. A small group. Bob, a friend, is added; Carol, whom Alice does not
    // know, is invited and joins when she accepts.
    let group = alice
        .create_group("weekend", &[bob.user_id(), carol.user_id()])
        .await?
        .channel;
    for invitation in carol.invitations().await?.incoming {
        println!("carol is invited to '{}'", invitation.group_name);
        carol.accept_invitation(invitation.channel).await?;
    }
    let mut carol_tablet = connect(&carol, DeviceId::new_random()).await?;
    bob_phone.send(group.id, "Hiking on Saturday?").await?;
    show("alice's laptop", &next_message(&mut alice_laptop).await?);
    show("carol's tablet", &next_message(&mut carol_tablet).await?);

    // 5. Bob goes offline; messages keep coming and wait in his inbox.
    bob_phone.close().await;
    drop(bob_phone);
    println!("bob's phone went offline");
    alice_laptop.send(direct.id, "Are you there?").await?;
    carol_tablet.send(group.id, "Saturday works for me").await?;
    alice_laptop.send(group.id, "Then it's settled").await?;

    // 6. Bob opens a second device: it syncs everything he missed, in
    // order, once.
    let mut bob_laptop = bob
        .connect(
            DeviceId::new_random(),
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await?;
    println!("bob's laptop connected and syncs his inbox:");
    loop {
        match bob_laptop.next_event().await {
            Some(ClientEvent::Message(d)) => show("bob's laptop", &d.message),
            Some(ClientEvent::Synced { cursor }) => {
                println!("  (sync complete, cursor {cursor})");
                break;
            }
            Some(_) => {}
            None => return Err("connection closed".into()),
        }
    }

    // 7. Presence: Bob sees Alice online; when she leaves, after the
    // presence timeout without heartbeats, he sees her go offline.
    let status = bob_laptop.presence(&[alice.user_id()]).await?;
    println!("alice is {:?}", status[0].status);
    alice_laptop.close().await;
    drop(alice_laptop);
    println!("alice closed her laptop; waiting for the presence timeout...");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), bob_laptop.next_event()).await {
            Ok(Some(ClientEvent::Presence(p))) if p.user == alice.user_id() => {
                println!(
                    "bob's laptop: alice is now {:?} (last active at {:?})",
                    p.status, p.last_active_at
                );
                break;
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("connection closed".into()),
            Err(_) => return Err("no presence change within 10 s".into()),
        }
    }

    // 8. History stays available over HTTP.
    let history = bob.history(group.id, &Default::default()).await?;
    println!(
        "the group's history has {} messages",
        history.messages.len()
    );

    bob_laptop.close().await;
    carol_tablet.close().await;
    shutdown.cancel();
    serving.await??;
    println!("server stopped cleanly");
    Ok(())
}

async fn connect(session: &Session, device: DeviceId) -> Result<Connection, Error> {
    let mut conn = session
        .connect(
            device,
            Arc::new(MemoryCursorStore::new()),
            ConnectOptions::default(),
        )
        .await?;
    // Wait for the first sync so later messages arrive live.
    while let Some(event) = conn.next_event().await {
        if let ClientEvent::Synced { .. } = event {
            return Ok(conn);
        }
    }
    Err("connection closed before its first sync".into())
}

async fn next_message(conn: &mut Connection) -> Result<Message, Error> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.next_event()).await {
            Ok(Some(ClientEvent::Message(d))) => return Ok(d.message),
            Ok(Some(_)) => {}
            Ok(None) => return Err("connection closed".into()),
            Err(_) => return Err("no message within 10 s".into()),
        }
    }
}

fn show(device: &str, m: &Message) {
    println!("  {device} <- [{}] {}", m.id, m.content);
}
