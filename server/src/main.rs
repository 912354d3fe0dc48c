//! `touchlake`: serves a Delta Lake of customer touchpoints over the PostgreSQL wire
//! protocol.
//!
//! Holds the CLI, configuration, the wire protocol front end and per-connection
//! sessions. Depends on `touchlake-catalog` (the lake), `touchlake-ingest` (the demo
//! data) and `touchlake-functions` (SQL functions).

mod allocator;
mod collector;
mod compat;
mod config;
mod current_setting;
mod distinct_counts;
mod engine;
mod extension;
mod join_exprs;
mod match_recognize;
mod naming;
mod npath;
mod pg_settings;
mod scheduler;
mod session;
mod settings;
mod single_phase;
mod string_equals;
mod timestamp_text;
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
    /// Run ingest for some or all sources once, with a progress bar and a summary table.
    Ingest {
        #[command(flatten)]
        serve: ServeArgs,
        /// Folder of source definitions (`*.toml`) to load into the lake first.
        #[arg(long)]
        sources: Option<String>,
        /// Sources to run (default: every defined source).
        names: Vec<String>,
    },
    /// Identity resolution over the lake's touchpoints.
    Identity {
        #[command(subcommand)]
        action: IdentityAction,
    },
}

#[derive(Subcommand, Debug)]
enum IdentityAction {
    /// Resolve identities now and print what the run did.
    Run {
        #[command(flatten)]
        serve: ServeArgs,
        /// A setting for this run, e.g. `--set max_degree.device_id=3` (repeatable).
        #[arg(long = "set")]
        set: Vec<String>,
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
    /// Address of the HTTP event collector (Segment API), e.g. 127.0.0.1:8088.
    #[arg(long)]
    http_listen: Option<String>,
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
        if let Some(l) = &self.http_listen {
            cfg.http_listen = Some(l.clone());
        }
        Ok(cfg)
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Stack of each runtime thread. Planning and evaluating an expression recurses once per
/// nesting level (`a OR b OR c …` from a BI tool's filter is one level per term), and a
/// thread that runs out of stack aborts the whole process: with this much (reserved, and
/// committed only as used) the deepest statement [`session`] accepts fits.
const THREAD_STACK: usize = 64 << 20;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build();
    match runtime {
        Ok(rt) => rt.block_on(start()),
        Err(e) => {
            eprintln!("touchlake: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn start() {
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
        Command::Ingest {
            serve: args,
            sources,
            names,
        } => {
            let mut cfg = args.config()?;
            if sources.is_some() {
                cfg.sources = sources;
            }
            let engine = Engine::start(cfg).await?;
            engine.sync_source_folder().await?;
            ingest(&engine, &names).await
        }
        Command::Identity {
            action: IdentityAction::Run { serve: args, set },
        } => {
            let cfg = args.config()?;
            let mut config = cfg.identity.config()?;
            for kv in &set {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| format!("--set {kv}: expected setting=value"))?;
                config.set(k.trim(), v.trim())?;
            }
            let engine = Engine::start(cfg).await?;
            let s = touchlake_ingest::identity::run(&engine.lake, &config).await?;
            println!(
                "identity run {} ({}): {} touchpoints, {} identifiers, {} links → {} persons \
                 ({} kept, {} merges, {} splits); {} identifiers guarded, {} links skipped; \
                 largest person {} identifiers; {:.2} s",
                s.run_id,
                if s.full_reason.is_empty() {
                    s.mode.clone()
                } else {
                    format!("{}: {}", s.mode, s.full_reason)
                },
                s.touchpoints,
                s.identifiers,
                s.edges,
                s.persons,
                s.persons_kept,
                s.merges,
                s.splits,
                s.guarded,
                s.skipped_edges,
                s.largest_person,
                s.seconds
            );
            Ok(())
        }
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
                // Three more channels arrive the real way: raw files, source definitions,
                // ingest with quarantine.
                let runs = touchlake_ingest::demo_landing::ingest_demo_channels(&engine.lake, seed)
                    .await?;
                for r in &runs {
                    eprintln!(
                        "ingested source {}: {} read, {} accepted, {} rejected, {} duplicate",
                        r.source, r.rows_read, r.rows_accepted, r.rows_rejected, r.rows_duplicate
                    );
                }
                // Identity resolution over all of it: the ingested channels' touchpoints
                // join the generated persons, whose ids carry over.
                let id =
                    touchlake_ingest::identity::run(&engine.lake, &cfg.identity.config()?).await?;
                eprintln!(
                    "identity run: {} identifiers → {} persons ({} kept their id), {} guarded",
                    id.identifiers, id.persons, id.persons_kept, id.guarded
                );
                // The layout journey queries read fastest (one person's rows together).
                let (added, removed) =
                    touchlake_ingest::demo::cluster_by_person(&engine.lake).await?;
                eprintln!("unified.touchpoints laid out by person: {removed} files → {added}");
                eprintln!(
                    "demo lake written to {} in {:.1}s: {} touchpoints of {} generated persons",
                    engine.lake.url(),
                    started.elapsed().as_secs_f64(),
                    summary.touchpoints,
                    summary.persons,
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
    let n = engine.sync_source_folder().await?;
    if n > 0 {
        tracing::info!("loaded {n} source definitions");
    }
    serve_engine(engine).await
}

/// `touchlake ingest`: run sources once; print one summary row per source.
async fn ingest(engine: &Engine, names: &[String]) -> Result<(), BoxError> {
    let lake = &engine.lake;
    let defs = if names.is_empty() {
        touchlake_ingest::source::load_all(lake).await?
    } else {
        let mut defs = vec![];
        for n in names {
            defs.push(
                touchlake_ingest::source::load(lake, n)
                    .await?
                    .ok_or_else(|| touchlake_ingest::IngestError::NoSuchSource(n.clone()))?,
            );
        }
        defs
    };
    if defs.is_empty() {
        return Err("no sources defined (CREATE SOURCE, or --sources DIR with *.toml)".into());
    }
    let mut runs = vec![];
    let mut failed = 0;
    for def in defs {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(def.name.clone());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let b = bar.clone();
        let result = touchlake_ingest::run::run_any(lake, &def, true, &move |p| {
            b.set_message(format!(
                "file {}/{} {}, {} rows",
                (p.files_done + 1).min(p.files_total.max(1)),
                p.files_total,
                p.file,
                p.rows_read
            ))
        })
        .await;
        bar.finish_and_clear();
        match result {
            Ok(s) => runs.extend(s),
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e}", def.name);
            }
        }
    }
    println!(
        "{:<20} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8}  status",
        "source", "files", "read", "accepted", "rejected", "duplicate", "seconds"
    );
    for s in &runs {
        println!(
            "{:<20} {:>6} {:>10} {:>10} {:>10} {:>10} {:>8.2}  {}",
            s.source,
            s.files_ingested,
            s.rows_read,
            s.rows_accepted,
            s.rows_rejected,
            s.rows_duplicate,
            s.seconds,
            s.status
        );
    }
    if failed > 0 {
        return Err(format!("{failed} source(s) failed").into());
    }
    Ok(())
}

async fn serve_engine(engine: Arc<Engine>) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(&engine.config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", engine.config.listen))?;
    let addr = listener.local_addr()?;
    if let Some(http) = &engine.config.http_listen {
        let l = tokio::net::TcpListener::bind(http)
            .await
            .map_err(|e| format!("cannot listen on {http}: {e}"))?;
        println!(
            "touchlake collector listening on http://{}",
            l.local_addr()?
        );
        let e = engine.clone();
        tokio::spawn(async move {
            if let Err(err) = collector::serve(e, l).await {
                tracing::error!("collector stopped: {err}");
            }
        });
    }
    // Tests and scripts read this line to find an ephemeral port.
    println!("touchlake listening on {addr} (lake {})", engine.lake.url());
    eprintln!("connect with: psql postgresql://touchlake@{addr}/touchlake");
    engine.spawn_refresher();
    scheduler::spawn(engine.clone());
    scheduler::spawn_compaction(engine.clone());
    tokio::select! {
        r = wire::serve(engine.clone(), listener) => r?,
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
    }
    Ok(())
}
