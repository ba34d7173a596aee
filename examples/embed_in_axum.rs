//! A product server that embeds the chat server in its own axum
//! application: the product's routes at `/`, chat under `/chat`, one
//! process and one port. See `examples/src/product.rs` for the server
//! itself and the order of start-up and shutdown.
//!
//! ```sh
//! cargo run --example embed_in_axum -- --listen 127.0.0.1:8080 --data-dir ./product-data
//! # then, in another terminal:
//! cargo run --example terminal -- --server http://127.0.0.1:8080/chat --user alice --signup
//! ```
//!
//! Ctrl-C stops it gracefully: chat sessions are told to reconnect (close
//! code 4000) while axum stops accepting.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use examples::product;

/// A product server with chat inside.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the product keeps its data (chat's store and token secret).
    #[arg(long, default_value = "./product-data")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let chat = product::chat_server(&args.data_dir, chat_server::ServerConfig::default()).await?;
    let app = product::app(&chat);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "product on http://{addr}/, chat for clients at http://{addr}{}",
        product::CHAT_PREFIX
    );

    let stop = chat_server::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    product::serve(listener, chat, app, stop).await?;
    println!("stopped cleanly");
    Ok(())
}
