//! The `celeriac` binary: parse the CLI, load the config, init tracing, run.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use celeriac::config::Config;
use celeriac::state::Role;

#[derive(Parser)]
#[command(
    version,
    about = "Serve ML models behind a submit/poll API with a supervised worker pool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log as JSON lines instead of text (`RUST_LOG` sets the level; default info).
    #[arg(long, global = true, env = "CELERIAC_LOG_JSON")]
    log_json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server.
    Serve {
        /// The configuration file.
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Listen address, overriding `server.listen` and `CELERIAC_LISTEN`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run the pools only, taking work from the broker (`[broker] url` or
    /// `CELERIAC_BROKER_URL` is required). HTTP serves `/metrics`, `/health/*`,
    /// `/v1/admin/*` and `/openapi.json`, no task routes.
    Worker {
        /// The configuration file.
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
        /// Listen address, overriding `server.listen` and `CELERIAC_LISTEN`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Train a model directory's classification head on a labelled CSV and write
    /// `head.safetensors` and `head.json` into it.
    TrainHead {
        /// The model directory (its model.toml names the labels and the head file).
        #[arg(long, default_value = "models/spam-minilm")]
        model: PathBuf,
        /// A `Category,Message` CSV.
        #[arg(long, default_value = "../shared/data/sms_spam.csv")]
        data: PathBuf,
        /// Seed of the train/test split (42 is the baseline's split).
        #[arg(long, default_value_t = 42)]
        seed: u32,
        /// Fraction held out for testing.
        #[arg(long, default_value_t = 0.3)]
        test_fraction: f64,
        /// Full-batch optimisation steps.
        #[arg(long, default_value_t = 3000)]
        steps: usize,
        /// Learning rate.
        #[arg(long, default_value_t = 0.05)]
        learning_rate: f64,
        /// L2 penalty on the weights.
        #[arg(long, default_value_t = 1e-4)]
        l2: f64,
    },
    /// A `processes` pool's child: reads its tasks and batches on stdin (started by the
    /// server, not by hand).
    #[command(hide = true)]
    Child {
        /// The pid of the server that started it; the child exits if it is gone.
        #[arg(long)]
        parent: u32,
    },
    /// Compare a model's precisions with f32 on one device: cosine of each text's
    /// embedding to f32's (min / mean), label flips, and time, over a JSON-lines file
    /// of `{"text": ...}`. Prints a Markdown table.
    Fidelity {
        /// The model directory.
        #[arg(long, default_value = "models/spam-minilm")]
        model: PathBuf,
        /// The device: `cpu`, `cuda:0`, ...
        #[arg(long, default_value = "cpu")]
        device: String,
        /// `packed` or `candle`; default the device's.
        #[arg(long)]
        kernels: Option<String>,
        /// The precisions to compare with f32, comma-separated; default bf16,int8 on
        /// the packed kernels, f16,bf16 on the candle kernels.
        #[arg(long)]
        precisions: Option<String>,
        /// JSON lines with a `text` field (e.g. ../shared/bench/inputs.jsonl).
        #[arg(long)]
        inputs: PathBuf,
        /// Texts per batch.
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// Download a checkpoint from the Hugging Face hub into the local cache
    /// (`$HF_HOME/hub`), for `model = "hf:ORG/NAME"`. Fetches config, tokenizer and
    /// safetensors files only. Reads HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_CACHE.
    FetchModel {
        /// `hf:ORG/NAME` or `hf:ORG/NAME@REVISION` (a branch, tag or commit).
        model: String,
        /// No progress bars.
        #[arg(long)]
        quiet: bool,
    },
    /// Load and validate a configuration file, then exit.
    CheckConfig {
        /// The configuration file.
        #[arg(long, default_value = "config/default.toml")]
        config: PathBuf,
    },
}

/// `celeriac fidelity`: prints the table of [`celeriac::model::fidelity::compare`].
fn fidelity(
    model: &std::path::Path,
    device: &str,
    kernels: Option<String>,
    precisions: Option<String>,
    inputs: &std::path::Path,
    batch: usize,
) -> anyhow::Result<()> {
    use celeriac::model::{Kernels, Precision};
    let device: celeriac::config::DeviceSpec = device.parse().map_err(anyhow::Error::msg)?;
    let kernels = match kernels.as_deref() {
        None => Kernels::for_device(device),
        Some("packed") => Kernels::Packed,
        Some("candle") => Kernels::Candle,
        Some(k) => anyhow::bail!("--kernels {k}: expected packed or candle"),
    };
    let precisions: Vec<Precision> = match precisions {
        Some(list) => list
            .split(',')
            .map(|p| p.trim().parse().map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?,
        None if kernels == Kernels::Packed => vec![Precision::Bf16, Precision::Int8],
        None => vec![Precision::F16, Precision::Bf16],
    };
    let texts: Vec<String> = std::fs::read_to_string(inputs)
        .map_err(|e| anyhow::anyhow!("{}: {e}", inputs.display()))?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            v["text"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| anyhow::anyhow!("a line without a string `text`: {l}"))
        })
        .collect::<anyhow::Result<_>>()?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (f32_seconds, rows) =
        celeriac::model::fidelity::compare(model, device, kernels, &precisions, &texts, batch)?;
    println!(
        "{} texts on {device}, {kernels} kernels, batches of {batch}; f32: {:.3} s",
        texts.len(),
        f32_seconds
    );
    println!("| precision | cosine to f32 min / mean | label flips | seconds |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.6} / {:.6} | {} | {:.3} |",
            r.precision, r.min_cosine, r.mean_cosine, r.flips, r.seconds
        );
    }
    Ok(())
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    let mut config = Config::from_file(path)?;
    config.apply_env()?;
    Ok(config)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.log_json {
        // `processes` children inherit the environment: they log as JSON too.
        // SAFETY: no other thread exists yet (the async runtime starts below), so
        // nothing can read the environment while it changes.
        unsafe { std::env::set_var("CELERIAC_LOG_JSON", "true") };
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A child's stdout carries its protocol: it logs to stderr, as the server's own
    // threads would.
    let child = matches!(cli.command, Command::Child { .. });
    match (cli.log_json, child) {
        (true, false) => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
        (false, false) => tracing_subscriber::fmt().with_env_filter(filter).init(),
        (true, true) => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        (false, true) => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    // A task's panic is caught and reported by its worker; log it as one structured
    // line instead of the default stderr dump.
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        tracing::error!(thread = thread.name().unwrap_or("?"), %location, "panic: {payload}");
    }));
    if let Command::Child { parent } = cli.command {
        // No async runtime: a child runs batches on its main thread, and starts fast.
        std::process::exit(celeriac::actors::worker::child::main(parent));
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_command(cli.command))
}

async fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { config } => {
            let config = load(&config)?;
            config.validate()?;
            println!(
                "config OK: {} pools, {} tasks",
                config.pools.len(),
                config.tasks.len()
            );
            Ok(())
        }
        Command::Fidelity {
            model,
            device,
            kernels,
            precisions,
            inputs,
            batch,
        } => fidelity(&model, &device, kernels, precisions, &inputs, batch),
        Command::TrainHead {
            model,
            data,
            seed,
            test_fraction,
            steps,
            learning_rate,
            l2,
        } => {
            let opts = celeriac::model::train::TrainOptions {
                steps,
                learning_rate,
                l2,
            };
            let report =
                celeriac::model::train::train_head(&model, &data, seed, test_fraction, &opts)
                    .map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Command::FetchModel { model, quiet } => {
            let spec = format!("hf:{}", model.strip_prefix("hf:").unwrap_or(&model));
            let fetched =
                tokio::task::spawn_blocking(move || celeriac::model::fetch::fetch(&model, !quiet))
                    .await??;
            println!("{}", fetched.snapshot.display());
            match &fetched.offline {
                Some(why) => eprintln!(
                    "{why}\n{spec} is already in the cache at {} ({} files); serve it with model = \"{spec}\"",
                    fetched.snapshot.display(),
                    fetched.files.len()
                ),
                None => eprintln!(
                    "fetched {} files into {} (left out: {}); serve it with model = \"{spec}\"",
                    fetched.files.len(),
                    fetched.snapshot.display(),
                    if fetched.skipped.is_empty() {
                        "none".to_string()
                    } else {
                        fetched.skipped.join(", ")
                    },
                ),
            }
            Ok(())
        }
        Command::Serve { config, listen } => run(&config, listen, Role::Serve).await,
        Command::Worker { config, listen } => run(&config, listen, Role::Worker).await,
        Command::Child { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// `serve` and `worker`: start the node, listen, serve until SIGTERM/SIGINT, drain.
async fn run(
    config: &std::path::Path,
    listen: Option<SocketAddr>,
    role: Role,
) -> anyhow::Result<()> {
    let mut config = load(config)?;
    if let Some(addr) = listen {
        config.server.listen = addr;
    }
    let addr = config.server.listen;
    let app = celeriac::app::App::start_as(config, role).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (server.listen / --listen)"))?;
    tracing::info!(addr = %listener.local_addr()?, ?role, "listening");
    app.serve(listener, shutdown_signal()).await
}
