//! An echo bot on `chat-client` alone: it answers every message sent to it
//! with the same text, and neither loses a message nor answers one twice,
//! whether the server restarts or the bot itself is killed (`kill -9`)
//! halfway through a backlog.
//!
//! ```sh
//! cargo run -p chat-server --features full -- --data-dir ./chat-data &
//! cargo run -p examples --bin echo-bot -- --server http://127.0.0.1:8080 \
//!     --user echo-bot --password 'a long bot password' --state ./echo-bot-state --signup
//! ```
//!
//! Then befriend `echo-bot` from any client (it accepts friend requests
//! and group invitations) and write to it.
//!
//! How it keeps its promises:
//!
//! * **Nothing lost**: it connects with [`AckMode::Manual`] and
//!   acknowledges a message only once its answer is stored; the cursor it
//!   saves in `--state` never passes a message it has not answered, so
//!   after a crash the next run gets every unanswered message again.
//! * **Nothing answered twice**: each answer's idempotency key is made
//!   from the message id (`echo-<id>`); an answer sent again after a crash
//!   (stored, but not yet acknowledged when the bot died) is recognised by
//!   the server as a duplicate and stored once.
//! * **Sends from the event loop**: it answers from the loop that reads the
//!   events, which the connection allows (it keeps reading its socket
//!   whatever the loop does).
//! * **A server that restarts or is not up yet**: [`Retry`] retries the
//!   log-in, [`ConnectOptions::retry_initial_connect`] the first
//!   connection, and the connection reconnects and syncs by itself; with
//!   [`Password`] credentials it logs in again when its session is logged
//!   out.
//!
//! It prints one line per step (`echoed seq=.. id=..`, `acked seq=..
//! id=..`), which the kill test in `examples/tests/echo_bot.rs` reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chat_client::{
    AckMode, ChatClient, ClientEvent, ClientMsgId, ConnectOptions, DeviceId, ErrorCode,
    FileCursorStore, Password, Retry,
};
use clap::Parser;

/// Answers every message with the same text, exactly once.
#[derive(Debug, Parser)]
struct Args {
    /// The chat server's HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The bot's username.
    #[arg(long)]
    user: String,
    /// The bot's password (`ECHO_BOT_PASSWORD` keeps it out of `ps`).
    #[arg(long, env = "ECHO_BOT_PASSWORD", hide_env_values = true)]
    password: String,
    /// Where the bot keeps its device id and cursor between runs.
    #[arg(long, default_value = "./echo-bot-state")]
    state: PathBuf,
    /// Create the account first if it does not exist yet.
    #[arg(long)]
    signup: bool,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let client = ChatClient::new(&args.server)?;
    // The server may still be starting: retry while that is the trouble.
    let retry = Retry::default();
    if args.signup {
        match retry
            .run(|| client.signup(&args.user, &args.password, Some("Echo bot")))
            .await
        {
            Ok(_) => println!("signed up {}", args.user),
            Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let credentials = Password::new(&args.user, &args.password);
    let session = retry.run(|| client.login_with(credentials.clone())).await?;
    let device = device_id(&args.state)?;
    let options = ConnectOptions {
        ack: AckMode::Manual,
        retry_initial_connect: true,
        ..ConnectOptions::default()
    };
    let store = Arc::new(FileCursorStore::new(&args.state));
    let mut conn = session.connect(device, store, options).await?;
    println!("connected as {} (device {device})", args.user);

    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            _ = &mut stop => {
                conn.close().await;
                println!("stopped");
                return Ok(());
            }
            event = conn.next_event() => event,
        };
        let Some(event) = event else { break };
        match event {
            ClientEvent::Message(delivery) => {
                let m = &delivery.message;
                // Its own answers come back as messages only after a crash
                // cut off their receipts: nothing to answer.
                if m.sender != conn.user_id() {
                    let key = ClientMsgId::new(format!("echo-{}", m.id))?;
                    let receipt = conn
                        .send_with_id(m.channel_id, key, m.content.clone())
                        .await?;
                    println!(
                        "echoed seq={} id={} as={} duplicate={}",
                        delivery.seq, m.id, receipt.message_id, receipt.duplicate
                    );
                }
                // Only now is it handled: a crash before this line gets it
                // delivered again, and the answer's key makes that harmless.
                delivery.ack().await?;
                println!("acked seq={} id={}", delivery.seq, m.id);
            }
            ClientEvent::FriendRequest(user) => {
                session.add_friend(user.id).await?;
                println!("befriended {}", user.username);
            }
            ClientEvent::Invitation(invitation) => {
                session.accept_invitation(invitation.channel).await?;
                println!("joined {}", invitation.group_name);
            }
            ClientEvent::Connected { server_id } => println!("online via {server_id}"),
            ClientEvent::Disconnected { code, reason } => {
                println!("offline ({code:?} {reason}), reconnecting")
            }
            _ => {}
        }
    }
    let why = conn.closed().await;
    println!("connection stopped: {why}");
    Err(why.into())
}

/// This installation's device id, made on the first run and kept in the
/// state directory (the cursor belongs to it).
fn device_id(state: &Path) -> Result<DeviceId, Error> {
    let path = state.join("device");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().parse()?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(state)?;
            let device = DeviceId::new_random();
            let tmp = state.join("device.tmp");
            std::fs::write(&tmp, device.to_string())?;
            std::fs::rename(&tmp, &path)?;
            Ok(device)
        }
        Err(e) => Err(e.into()),
    }
}
