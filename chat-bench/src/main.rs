//! `chat-bench`: the load tool's command line. Exit code 0 when every
//! correctness check passed, 1 when one failed (the report says which), 2
//! when the scenario could not run.

use std::process::ExitCode;

use chat_bench::{Cli, Command};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(async move {
        if let Command::Serve(args) = &cli.command {
            return match chat_bench::target::serve(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chat-bench serve: {e}");
                    ExitCode::from(2)
                }
            };
        }
        if let Command::Cluster(chat_bench::cli::ClusterCommand::Up(args)) = &cli.command {
            return match chat_bench::harness::up(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("chat-bench cluster up: {e}");
                    ExitCode::from(2)
                }
            };
        }
        match chat_bench::run(&cli).await {
            Ok(report) => {
                let child = matches!(&cli.command, Command::Connections(a) if a.child);
                if !child {
                    println!("{}", report.table());
                    if let Some(path) = &cli.json {
                        println!("report written to {}", path.display());
                    }
                }
                if report.passed {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("chat-bench: {e}");
                ExitCode::from(2)
            }
        }
    })
}
