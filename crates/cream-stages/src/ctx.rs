//! What every stage needs: the artifact store, model inputs as artifact ids, progress output.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cream_core::{Artifact, ArtifactSpec, InputRef, ProduceOutput, Store};
use serde_json::Value;

/// The version recorded in manifests. Deliberately not a git hash: artifacts stay cache hits
/// across commits that do not change the crate version.
pub const CODE_VERSION: &str = concat!("cream ", env!("CARGO_PKG_VERSION"));

/// The exit status of a stage run with [`Ctx::cached_only`] whose artifact is not in the store.
pub const NOT_CACHED_EXIT: i32 = 3;

pub struct Ctx {
    pub store: Store,
    pub quiet: bool,
    /// Compute nothing: every artifact must already be in the store. A miss ends the process
    /// with status [`NOT_CACHED_EXIT`]. Cluster drivers use it to ask which artifacts a command
    /// would produce and whether they exist, so a rerun submits only what is missing.
    pub cached_only: bool,
}

impl Ctx {
    pub fn new(artifacts: &Path, quiet: bool) -> Result<Self> {
        Ok(Ctx { store: Store::open(artifacts)?, quiet, cached_only: false })
    }

    /// An info message on stderr (through `tracing`; hidden with --quiet).
    pub fn log(&self, msg: impl AsRef<str>) {
        tracing::info!("{}", msg.as_ref());
    }

    pub fn backend() -> String {
        match cream_lm::default_device() {
            Ok(d) if d.is_cuda() => "cuda".into(),
            _ => format!("cpu x{}", rayon_threads()),
        }
    }

    /// Produce (or find) the artifact of `spec`, saying which on stderr.
    pub fn produce(
        &self,
        spec: ArtifactSpec,
        work: impl FnOnce(&Path) -> Result<ProduceOutput>,
    ) -> Result<Artifact> {
        let stage = spec.stage.clone();
        if self.cached_only && self.store.lookup(&spec)?.is_none() {
            self.log(format!("{stage}: {} is not in the store (--cached-only)", spec.id().as_str()));
            std::process::exit(NOT_CACHED_EXIT);
        }
        let produced = self.store.produce(&spec, CODE_VERSION, &Self::backend(), work)?;
        let a = produced.artifact;
        if produced.cache_hit {
            self.log(format!("{stage}: cache hit {}", a.dir.display()));
        } else {
            self.log(format!("{stage}: produced {} in {:.1}s", a.dir.display(), a.manifest.wall_time_s));
        }
        Ok(a)
    }

    /// Open an input artifact (a path or `<stage>/<id>`) of the expected stage.
    pub fn open(&self, path: &str, stage: &str) -> Result<Artifact> {
        self.store.open_artifact(path, Some(stage))
    }

    /// A model given by path: a `train` artifact in the store (identified by its id) or an
    /// external GGUF file / Hugging Face directory (identified by the blake3 of its content).
    /// A path inside the store must be a finished `train` artifact: a half-written one (a
    /// temporary directory of an interrupted run) or a corrupt one is refused, never loaded as an
    /// external model.
    pub fn model_input(&self, role: &str, path: &Path) -> Result<(InputRef, PathBuf)> {
        let inside_store = std::fs::canonicalize(path).is_ok_and(|p| p.starts_with(self.store.root()));
        match self.store.open_artifact(&path.to_string_lossy(), Some(crate::names::stage::TRAIN)) {
            Ok(a) => return Ok((a.as_input(role), a.dir.clone())),
            Err(e) if inside_store => {
                return Err(e.context(format!("--{role} {} is not a usable model", path.display())));
            }
            Err(_) => {}
        }
        let id = if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("cannot list model directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "manifest.json"))
                .collect();
            entries.sort();
            let mut listing = String::new();
            for e in &entries {
                let name = e.file_name().unwrap_or_default().to_string_lossy().into_owned();
                listing.push_str(&format!("{name}\t{}\n", cream_core::hash_file(e)?));
            }
            cream_core::hash_bytes(listing.as_bytes())
        } else {
            cream_core::hash_file(path).with_context(|| {
                format!("model {} is not readable; run `just setup` for the default model", path.display())
            })?
        };
        Ok((InputRef { name: role.into(), stage: crate::names::stage::SOURCE.into(), id }, path.to_path_buf()))
    }
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Serialize a config section as artifact parameters.
pub fn params<T: serde::Serialize>(section: &T) -> Result<Value> {
    Ok(serde_json::to_value(section)?)
}
