//! Flags shared by every cream binary. A stage embeds these with `#[command(flatten)]`, so a
//! flag means the same thing (and is documented the same way) everywhere.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

/// Output and threading flags.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Print nothing but results (no progress bars, no summaries on stderr).
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
    /// Worker threads for the CPU backend (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
}

impl Common {
    /// Apply the thread setting; call once at start-up.
    pub fn init(&self) -> Result<()> {
        if let Some(n) = self.threads {
            rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
        }
        Ok(())
    }
}

/// Which model to load.
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
