//! Flags shared by several cream binaries: the one place that defines them. A binary embeds
//! these with `#[command(flatten)]`, so a flag means the same thing (and is documented the same
//! way) everywhere: [`Common`] (`--quiet`, `--threads`), [`ConfigArg`] (`--config`),
//! [`StoreArg`] (`--artifacts`), [`Stage`] (the three together), [`ModelArg`] (`--model` of the
//! debugging tools) and [`Sharding`] (`--shard`, `--merge`). Flags that name a stage's own
//! inputs (`--prompts`, `--samples`, a stage's `--model` or `--policy`, ...) are the stage's and
//! are documented there.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Output and threading flags.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Print nothing but results, warnings and errors (no progress bars, no notes or summaries
    /// on stderr).
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More detail on stderr: -v debug, -vv trace messages of cream's crates. RUST_LOG, when
    /// set, chooses instead (e.g. RUST_LOG=cream_stages=debug,candle_core=info).
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Worker threads for the CPU backend (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
}

impl Common {
    /// Start logging ([`Common::init_logging`]) and apply the thread setting (see
    /// [`cream_lm::configure_threads`]); call once at start-up.
    pub fn init(&self) -> Result<()> {
        self.init_logging();
        cream_lm::configure_threads(self.threads)
    }

    /// Print `tracing` events on stderr, one plain line each (no time, no target; warnings and
    /// errors prefixed `warning: ` / `error: `), without tearing progress bars. Which events: by
    /// RUST_LOG when it is set, else cream's info messages (debug with -v, trace with -vv;
    /// warnings only with --quiet) and other crates' warnings.
    pub fn init_logging(&self) {
        use tracing_subscriber::EnvFilter;
        let filter = match std::env::var("RUST_LOG") {
            Ok(s) if !s.trim().is_empty() => EnvFilter::new(s),
            _ => EnvFilter::new(match (self.quiet, self.verbose) {
                (true, _) => "warn",
                (false, 0) => "warn,cream=info",
                (false, 1) => "warn,cream=debug",
                (false, _) => "warn,cream=trace",
            }),
        };
        // A second call (tests, a binary that inits twice) keeps the first subscriber.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .event_format(PlainLines)
            .with_writer(|| cream_stages::progress::LogWriter)
            .try_init();
    }
}

/// One line per event: the level as a `warning: ` / `error: ` / `debug: ` / `trace: ` prefix (none
/// for info), then the message and fields.
struct PlainLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prefix = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        w.write_str(prefix)?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Which model to load (the debugging tools `cream-score` and `cream-chat`; a stage's model flags
/// name the model's role and are the stage's own).
#[derive(Debug, Clone, Args)]
pub struct ModelArg {
    /// A GGUF file or a Hugging Face model directory (config.json + *.safetensors +
    /// tokenizer.json + tokenizer_config.json).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
}

impl ModelArg {
    pub fn load(&self) -> Result<cream_lm::LoadedModel> {
        let device = cream_lm::default_device()?;
        cream_lm::load(&self.model, &device)
    }
}

/// The config a stage reads when no `--config` is given.
pub const DEFAULT_CONFIG: &str = "pipelines/smoke.toml";

/// Which pipeline config to read.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Pipeline config (TOML); the stage reads its own section [default: pipelines/smoke.toml,
    /// with a note on stderr]
    #[arg(long, value_name = "TOML")]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The `--config` path, or [`DEFAULT_CONFIG`] with a note on stderr (an info message: not
    /// with --quiet), so a forgotten `--config` does not silently run the smoke settings.
    pub fn path(&self) -> PathBuf {
        if self.config.is_none() {
            tracing::info!("note: no --config given; using {DEFAULT_CONFIG}");
        }
        self.given_or_default()
    }

    /// The `--config` path, or [`DEFAULT_CONFIG`], silently.
    pub fn given_or_default(&self) -> PathBuf {
        self.config.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }

    /// Load and validate the config (see [`ConfigArg::path`]).
    pub fn load(&self) -> Result<cream_stages::config::Pipeline> {
        cream_stages::config::Pipeline::load(&self.path())
    }
}

/// Where the artifact store is.
#[derive(Debug, Clone, Args)]
pub struct StoreArg {
    /// Root of the artifact store.
    #[arg(long, env = "CREAM_ARTIFACTS", default_value = "artifacts", value_name = "DIR")]
    pub artifacts: PathBuf,
}

impl StoreArg {
    pub fn open(&self) -> Result<cream_core::Store> {
        cream_core::Store::open(&self.artifacts)
    }
}

/// Flags of every pipeline stage: the pipeline config and the artifact store.
#[derive(Debug, Clone, Args)]
pub struct Stage {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Compute nothing: print the artifact if it is already in the store, else exit with status
    /// 3 (the cluster driver uses it to submit only what is missing).
    #[arg(long)]
    pub cached_only: bool,
    #[command(flatten)]
    pub common: Common,
}

impl Stage {
    /// Initialise threads, load the config and open the store.
    pub fn init(&self) -> Result<(cream_stages::config::Pipeline, cream_stages::ctx::Ctx)> {
        self.common.init()?;
        let pipeline = self.config.load()?;
        let mut ctx = cream_stages::ctx::Ctx::new(&self.store.artifacts, self.common.quiet)?;
        ctx.cached_only = self.cached_only;
        Ok((pipeline, ctx))
    }
}

/// Print a produced artifact's directory as the last line of stdout (the justfile chains it).
pub fn emit(artifact: &cream_core::Artifact) {
    println!("{}", artifact.dir.display());
}

/// Flags of stages whose work is per prompt and can run as a job array across machines: each
/// array task runs one `--shard K/N`, then one `--merge` of the N shard artifacts publishes the
/// artifact an unsharded run would have produced (same id, same bytes), so later stages are
/// cache hits either way. Shard and merge runs need the same --config, inputs and a store on
/// shared storage (--artifacts / CREAM_ARTIFACTS).
#[derive(Debug, Clone, Args)]
pub struct Sharding {
    /// Do only shard K of N of the per-prompt work (0 <= K < N): the prompts at positions p with
    /// p % N == K. Publishes a shard artifact (parameters + "shard": "K/N") to pass to --merge.
    #[arg(long, value_name = "K/N", default_value = "0/1", conflicts_with = "merge")]
    pub shard: cream_stages::shard::Shard,
    /// Merge these shard artifacts (paths or <stage>/<id>; all shards 0..N of one --shard K/N
    /// run, same config and inputs) into the unsharded artifact instead of computing it.
    #[arg(long, value_name = "ARTIFACT", num_args = 1..)]
    pub merge: Vec<String>,
}

impl Sharding {
    /// The `--merge` artifacts as string slices.
    pub fn merge_paths(&self) -> Vec<&str> {
        self.merge.iter().map(String::as_str).collect()
    }

    /// Merge the `--merge` artifacts with `merge` when given, else compute `--shard` with `run`.
    pub fn run_or_merge<T>(
        &self,
        run: impl FnOnce(cream_stages::shard::Shard) -> Result<T>,
        merge: impl FnOnce(&[&str]) -> Result<T>,
    ) -> Result<T> {
        if self.merge.is_empty() { run(self.shard) } else { merge(&self.merge_paths()) }
    }
}
