//! `touchlake`: serves a Delta Lake of customer touchpoints over the PostgreSQL wire
//! protocol.
//!
//! Holds the CLI, configuration, the wire protocol front end and per-connection
//! sessions. Depends on `touchlake-catalog` (the lake), `touchlake-ingest` (the demo
//! data) and `touchlake-functions` (SQL functions).

mod compat;
mod config;
mod engine;
mod naming;
mod session;
mod settings;
mod wire;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::config::Config;
use crate::engine::Engine;

#[derive(Parser, Debug)]
#[command(
    name = "touchlake",
    version,
    about = "Customer-touchpoint analytics over Delta Lake, spoken as PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve a lake over the PostgreSQL wire protocol.
    Serve(ServeArgs),
    /// Write the demo lake (first start only) and serve it.
    Demo {
        #[command(flatten)]
        serve: ServeArgs,
        /// Persons in the generated demo (≈ 44 touchpoints each).
        #[arg(long, default_value_t = 5_000)]
        persons: u64,
        /// Generator seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Write the demo lake and exit without serving.
        #[arg(long)]
        no_serve: bool,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Lake location: a folder, s3://…, gs://… or az://… (default ./lake).
    #[arg(long)]
    lake: Option<String>,
    /// Address to listen on (default 127.0.0.1:5433).
    #[arg(long)]
    listen: Option<String>,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl ServeArgs {
    fn config(&self) -> Result<Config, config::ConfigError> {
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(l) = &self.lake {
            cfg.lake = l.clone();
        }
        if let Some(l) = &self.listen {
            cfg.listen = l.clone();
        }
        Ok(cfg)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TOUCHLAKE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("warn,touchlake=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("touchlake: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    match cli.command {
        Command::Serve(args) => serve(args.config()?).await,
        Command::Demo {
            serve: args,
            persons,
            seed,
            no_serve,
        } => {
            let mut cfg = args.config()?;
            if args.lake.is_none()
                && std::env::var("TOUCHLAKE_LAKE").is_err()
                && args.config.is_none()
            {
                cfg.lake = "./demo-lake".into();
            }
            let engine = Engine::start(cfg.clone()).await?;
            if touchlake_ingest::demo::exists(&engine.lake).await? {
                tracing::info!("demo lake already present at {}", engine.lake.url());
            } else {
                let opts = touchlake_ingest::demo::DemoOptions {
                    persons,
                    seed,
                    ..Default::default()
                };
                let started = std::time::Instant::now();
                let bar = indicatif::ProgressBar::new(persons);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "writing demo lake {bar:40} {pos}/{len} persons {elapsed}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                let summary = touchlake_ingest::demo::generate(&engine.lake, &opts, |done, _| {
                    bar.set_position(done)
                })
                .await?;
                bar.finish_and_clear();
                eprintln!(
                    "demo lake written to {} in {:.1}s: {} touchpoints, {} persons, {} identities",
                    engine.lake.url(),
                    started.elapsed().as_secs_f64(),
                    summary.touchpoints,
                    summary.persons,
                    summary.identities
                );
                engine.lake.refresh_listing().await?;
            }
            if no_serve {
                return Ok(());
            }
            serve_engine(engine).await
        }
    }
}

async fn serve(cfg: Config) -> Result<(), BoxError> {
    let engine = Engine::start(cfg).await?;
    serve_engine(engine).await
}

async fn serve_engine(engine: Arc<Engine>) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(&engine.config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", engine.config.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to find an ephemeral port.
    println!("touchlake listening on {addr} (lake {})", engine.lake.url());
    eprintln!("connect with: psql postgresql://touchlake@{addr}/touchlake");
    engine.spawn_refresher();
    tokio::select! {
        r = wire::serve(engine.clone(), listener) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
    }
    Ok(())
}
