//! The `slipway` binary: `serve` runs a node; every other subcommand is a client of one.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use slipway::cli::{Cli, Command, ServeArgs, run_client_command};
use slipway::config::{Overrides, Settings};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("slipway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        other => runtime.block_on(run_client_command(other)),
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    init_logging();
    let listen = match args.listen.as_deref().map(str::parse).transpose() {
        Ok(listen) => listen,
        Err(e) => {
            eprintln!("slipway: --listen: {e}");
            return ExitCode::from(2);
        }
    };
    let overrides = Overrides {
        listen,
        data_dir: args.data_dir,
    };
    let settings = match Settings::load(args.config.as_deref(), &overrides) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("slipway: {e}");
            return ExitCode::from(2);
        }
    };
    let node = match slipway::server::start(settings).await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("slipway: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("slipway: listening on http://{}", node.addr);
    stop_on_signal(node.shutdown.clone()).await;
    let _ = node.done.await;
    ExitCode::SUCCESS
}

/// SIGTERM or Ctrl-C stops the node; running builds go back to the queue.
async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

/// Human-readable lines on a terminal, JSON lines otherwise (journald, files); the level comes
/// from `RUST_LOG` (default `info`).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}
