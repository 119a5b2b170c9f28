//! The content-addressed artifact store.
//!
//! Layout: `<root>/<stage>/<id>/` holds a stage's output files and `manifest.json`, the commit
//! record. Next to the artifacts of a stage live `.locks/<id>.lock` (one lock file per key, never
//! deleted, so that every writer of a key locks the same inode), while a stage runs,
//! `.tmp-<id>-<pid>-<nanos>/`, the directory it writes into, and after a stage failed in a way
//! that leaves something worth keeping, `.recovery-<id>/` ([`Store::recovery_dir`]).
//!
//! Invariants:
//! - A directory `<root>/<stage>/<id>/` only ever appears by an atomic `rename` of a complete,
//!   fsynced temporary directory whose manifest was written last. A directory without a valid
//!   manifest is garbage, never an input ([`Store::gc`] removes it).
//! - At most one process or thread produces a given key at a time (an exclusive lock on the
//!   key's lock file); the others wait and then see a cache hit.
//! - Nothing is ever overwritten: an existing but invalid artifact directory is an error.
//! - Every artifact that is opened is verified against its manifest: exact file set, sizes and
//!   (with [`Verify::Full`], the default) blake3 hashes.

use std::collections::BTreeMap;
use std::fs::{self, File, TryLockError};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hash::{ArtifactId, InputRef, artifact_key, hash_file, is_hex64};

/// The name of the commit record inside every artifact directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The value of [`Manifest::format`] this version reads and writes.
pub const MANIFEST_FORMAT: &str = "cream-manifest/1";

const LOCKS_DIR: &str = ".locks";
const TMP_PREFIX: &str = ".tmp-";
const RECOVERY_PREFIX: &str = ".recovery-";
const CHECKPOINT_PREFIX: &str = ".checkpoint-";

/// Environment variable naming the failpoint a process halts at (see [`failpoint`]).
pub const FAILPOINT_ENV: &str = "CREAM_FAILPOINT";
/// Environment variable naming the marker file a halted process writes (see [`failpoint`]).
pub const FAILPOINT_MARKER_ENV: &str = "CREAM_FAILPOINT_MARKER";
/// Failpoint: the temporary directory exists, the stage has written nothing yet.
pub const FAIL_BEFORE_OUTPUT: &str = "before-output";
/// Failpoint: inside [`crate::write_table`], the rows are on disk but the Parquet footer is not.
pub const FAIL_MID_WRITE: &str = "mid-write";
/// Failpoint: every file and the manifest are written and fsynced, the rename has not happened.
pub const FAIL_BEFORE_PUBLISH: &str = "before-publish";

/// Whether `CREAM_FAILPOINT` names `name` (read once per process).
pub fn failpoint_armed(name: &str) -> bool {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(FAILPOINT_ENV).ok())
        .as_deref()
        == Some(name)
}

/// Crash-test hook: when `CREAM_FAILPOINT=<name>`, the first time the process reaches failpoint
/// `name` it creates the file `CREAM_FAILPOINT_MARKER` (if set) and sleeps forever, so that a
/// test can SIGKILL it at exactly that point. The points are [`FAIL_BEFORE_OUTPUT`],
/// [`FAIL_MID_WRITE`] and [`FAIL_BEFORE_PUBLISH`]. Unset (always, outside tests), it costs one
/// cached comparison.
pub fn failpoint(name: &str) {
    if !failpoint_armed(name) {
        return;
    }
    if let Some(marker) = std::env::var_os(FAILPOINT_MARKER_ENV) {
        let _ = fs::write(marker, name);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Errors of the store that callers may want to tell apart (reach them with
/// `anyhow::Error::downcast_ref`). Each message names the directory and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A stage name that does not match `[a-z0-9][a-z0-9_-]*`.
    #[error("invalid stage name {0:?}: stage names match [a-z0-9][a-z0-9_-]*")]
    InvalidStage(String),
    /// A directory without `manifest.json`: the leftover of an interrupted stage.
    #[error(
        "{dir}: not a finished artifact (no manifest.json, or an unpublished temporary \
         directory): it was interrupted; run `just gc` to remove it, then rerun the stage"
    )]
    NotFinished {
        /// The directory.
        dir: PathBuf,
    },
    /// An artifact whose content does not match its manifest, or whose manifest is invalid.
    #[error(
        "artifact {dir}: {problem}; the artifact was modified or is incomplete; delete the \
         directory and rerun the stage"
    )]
    Corrupt {
        /// The artifact directory.
        dir: PathBuf,
        /// What is wrong, naming the file.
        problem: String,
    },
    /// A path that does not name an artifact directory of this store.
    #[error("{path}: not an artifact of the store at {root}: {why}")]
    NotInStore {
        /// The path as given.
        path: PathBuf,
        /// The store root.
        root: PathBuf,
        /// Why not.
        why: String,
    },
    /// An artifact of another stage than the one required.
    #[error(
        "artifact {dir} was made by stage {found:?}, but an artifact of stage {expected:?} is needed here"
    )]
    WrongStage {
        /// The artifact directory.
        dir: PathBuf,
        /// The stage required by the caller.
        expected: String,
        /// The stage the artifact belongs to.
        found: String,
    },
}

/// How much of an artifact's content [`Store`] checks when it opens one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verify {
    /// File set, sizes and blake3 of every file (reads every byte).
    #[default]
    Full,
    /// File set and sizes only (cheap).
    Sizes,
}

/// One output file as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// blake3 hex digest of the content.
    pub blake3: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Number of rows, for tables.
    pub rows: Option<u64>,
}

/// The commit record of an artifact, `manifest.json`: where it came from and what it holds.
/// Unknown keys are an error (a renamed key is damage, not a newer format: that changes
/// [`Manifest::format`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The producing stage.
    pub stage: String,
    /// The stage's output schema version.
    pub schema_version: u32,
    /// The artifact's key, equal to its directory name.
    pub id: ArtifactId,
    /// The stage's parameters (hashed in canonical form into the key).
    pub params: Value,
    /// The inputs, in the order they were hashed into the key.
    pub inputs: Vec<InputRef>,
    /// Every output file by name.
    pub files: BTreeMap<String, FileEntry>,
    /// The version of the code that produced it (given by the caller, e.g. a git describe).
    pub code_version: String,
    /// The backend/device it ran on.
    pub backend: String,
    /// Seconds the stage's work took.
    pub wall_time_s: f64,
    /// CPU seconds (user + system, all threads) the process spent on the stage's work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_time_s: Option<f64>,
    /// The process's peak resident memory (MB) when the work finished (a high-water mark of the
    /// whole process, which runs one stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mb: Option<f64>,
    /// When it was produced, RFC 3339 UTC.
    pub created_at: String,
    /// Free-form statistics of the stage.
    #[serde(default)]
    pub extra: Value,
}

/// Everything that determines an artifact's key.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactSpec {
    /// The producing stage; must match `[a-z0-9][a-z0-9_-]*`.
    pub stage: String,
    /// The stage's output schema version.
    pub schema_version: u32,
    /// The stage's parameters.
    pub params: Value,
    /// The inputs, in a fixed order.
    pub inputs: Vec<InputRef>,
}

impl ArtifactSpec {
    /// The key of the artifact this spec describes (see [`artifact_key`]).
    pub fn id(&self) -> ArtifactId {
        artifact_key(&self.stage, self.schema_version, &self.params, &self.inputs)
    }
}

/// What a stage's work function reports about the files it wrote.
#[derive(Debug, Clone, Default)]
pub struct ProduceOutput {
    /// Row counts per output file name (only for tables).
    pub rows: BTreeMap<String, u64>,
    /// Free-form statistics, stored as [`Manifest::extra`].
    pub extra: Value,
}

impl ProduceOutput {
    /// Adds the row count of `file`.
    pub fn with_rows(mut self, file: &str, rows: u64) -> Self {
        self.rows.insert(file.to_owned(), rows);
        self
    }
}

/// The result of [`Store::produce`].
#[derive(Debug, Clone)]
pub struct Produced {
    /// The finished, verified artifact.
    pub artifact: Artifact,
    /// Whether it already existed (the work function was not called).
    pub cache_hit: bool,
}

/// A finished, verified artifact.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Its directory (canonical path).
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Artifact {
    /// The artifact's key.
    pub fn id(&self) -> &ArtifactId {
        &self.manifest.id
    }

    /// The path of the output file `file`, which must be listed in the manifest.
    pub fn path(&self, file: &str) -> Result<PathBuf> {
        if self.manifest.files.contains_key(file) {
            Ok(self.dir.join(file))
        } else {
            let have: Vec<_> = self.manifest.files.keys().map(String::as_str).collect();
            bail!(
                "artifact {}: has no file {file:?} (it has: {}); is it the output of the right stage?",
                self.dir.display(),
                have.join(", ")
            )
        }
    }

    /// This artifact as the input `role` of another stage.
    pub fn as_input(&self, role: &str) -> InputRef {
        InputRef {
            name: role.to_owned(),
            stage: self.manifest.stage.clone(),
            id: self.id().to_string(),
        }
    }
}

/// What [`Store::gc`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Unfinished directories that were removed.
    pub removed: Vec<PathBuf>,
    /// Unfinished directories left alone because a stage is producing that key right now.
    pub in_use: Vec<PathBuf>,
}

/// An artifact store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    verify: Verify,
}

impl Store {
    /// Opens (creating it if needed) the store at `root`, verifying artifacts fully.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref();
        fs::create_dir_all(root)
            .with_context(|| format!("cannot create the artifact store {}", root.display()))?;
        let root = fs::canonicalize(root)
            .with_context(|| format!("cannot resolve the artifact store {}", root.display()))?;
        Ok(Self {
            root,
            verify: Verify::Full,
        })
    }

    /// The same store, verifying opened artifacts as `verify` says.
    pub fn with_verify(self, verify: Verify) -> Self {
        Self { verify, ..self }
    }

    /// The store's root directory (canonical path).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the artifact of `spec`, producing it with `work` unless it already exists.
    ///
    /// `work` writes its output files (flat, plain names, not `manifest.json`) into the temporary
    /// directory it is given. Holding the key's lock, the store then hashes and fsyncs them,
    /// writes the manifest last, and renames the directory into place. If `work` fails (or
    /// panics), the temporary directory is removed and nothing is published.
    pub fn produce(
        &self,
        spec: &ArtifactSpec,
        code_version: &str,
        backend: &str,
        work: impl FnOnce(&Path) -> Result<ProduceOutput>,
    ) -> Result<Produced> {
        check_stage(&spec.stage)?;
        let id = spec.id();
        let stage_dir = self.root.join(&spec.stage);
        let (lock, lock_path) = open_lock(&stage_dir, &id)?;
        lock.lock()
            .with_context(|| format!("cannot lock {}", lock_path.display()))?;
        if let Some(artifact) = self.finished(&spec.stage, &id)? {
            return Ok(Produced {
                artifact,
                cache_hit: true,
            });
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let tmp = stage_dir.join(format!("{TMP_PREFIX}{id}-{}-{nanos}", std::process::id()));
        fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut guard = RemoveOnDrop(Some(tmp.clone()));
        failpoint(FAIL_BEFORE_OUTPUT);
        let started = Instant::now();
        let cpu_started = process_cpu_seconds();
        let output = work(&tmp).map_err(|e| {
            let hint = if out_of_space(&e) {
                "; the disk is full or a file-size limit was hit: free space (`just gc` removes \
                 abandoned temporary directories) and rerun"
            } else {
                ""
            };
            e.context(format!("stage {} failed; nothing was published{hint}", spec.stage))
        })?;
        let manifest = Manifest {
            format: MANIFEST_FORMAT.to_owned(),
            stage: spec.stage.clone(),
            schema_version: spec.schema_version,
            id: id.clone(),
            params: spec.params.clone(),
            inputs: spec.inputs.clone(),
            files: seal_files(&tmp, output.rows, &spec.stage)?,
            code_version: code_version.to_owned(),
            backend: backend.to_owned(),
            wall_time_s: started.elapsed().as_secs_f64(),
            // Rounded to microseconds (the clock's resolution), so the value survives a JSON round
            // trip exactly (a manifest read back equals the one written).
            cpu_time_s: process_cpu_seconds().zip(cpu_started).map(|(end, start)| ((end - start) * 1e6).round() / 1e6),
            peak_rss_mb: peak_rss_mb(),
            created_at: rfc3339(SystemTime::now()),
            extra: output.extra,
        };
        write_manifest(&tmp, &manifest)?;
        sync_dir(&tmp)?;
        failpoint(FAIL_BEFORE_PUBLISH);
        let dir = stage_dir.join(id.as_str());
        fs::rename(&tmp, &dir)
            .with_context(|| format!("cannot publish {} as {}", tmp.display(), dir.display()))?;
        guard.0 = None;
        sync_dir(&stage_dir)?;
        Ok(Produced {
            artifact: Artifact { dir, manifest },
            cache_hit: false,
        })
    }

    /// Where a stage that failed while producing `spec` may leave what it wants kept (e.g. the
    /// last good weights of a diverged training run): `<root>/<stage>/.recovery-<id>/`. It is
    /// never an input and never published; [`Store::gc`] leaves it alone. The caller creates it.
    pub fn recovery_dir(&self, spec: &ArtifactSpec) -> PathBuf {
        self.root
            .join(&spec.stage)
            .join(format!("{RECOVERY_PREFIX}{}", spec.id()))
    }

    /// Where a long stage producing `spec` keeps its checkpoints while it runs, so that a rerun
    /// after a kill (a preempted or requeued cluster job) resumes instead of starting over:
    /// `<root>/<stage>/.checkpoint-<id>/`. Never an input, never published; [`Store::gc`] leaves it
    /// alone (it is worth keeping until the stage finishes, which removes it).
    pub fn checkpoint_dir(&self, spec: &ArtifactSpec) -> PathBuf {
        self.root
            .join(&spec.stage)
            .join(format!("{CHECKPOINT_PREFIX}{}", spec.id()))
    }

    /// The finished, verified artifact of `spec`, if it exists.
    pub fn lookup(&self, spec: &ArtifactSpec) -> Result<Option<Artifact>> {
        check_stage(&spec.stage)?;
        self.finished(&spec.stage, &spec.id())
    }

    /// Opens and verifies an artifact given as a directory path or as `<stage>/<id>` relative to
    /// the store root. A path must resolve (symlinks included) to `<root>/<stage>/<id>`.
    /// With `expected_stage`, an artifact of another stage is an error.
    pub fn open_artifact(
        &self,
        path_or_id: &str,
        expected_stage: Option<&str>,
    ) -> Result<Artifact> {
        let path = match path_or_id.split_once('/') {
            Some((stage, id)) if is_stage(stage) && is_hex64(id) => self.root.join(stage).join(id),
            _ => PathBuf::from(path_or_id),
        };
        self.open_dir(&path, expected_stage)
    }

    /// Every finished artifact of `stage`, verified, in id order.
    pub fn list(&self, stage: &str) -> Result<Vec<Artifact>> {
        check_stage(stage)?;
        let stage_dir = self.root.join(stage);
        let mut ids = Vec::new();
        for name in dir_names(&stage_dir)? {
            if is_hex64(&name) && stage_dir.join(&name).join(MANIFEST_FILE).exists() {
                ids.push(name);
            }
        }
        ids.sort();
        ids.iter()
            .map(|id| self.open_dir(&stage_dir.join(id), Some(stage)))
            .collect()
    }

    /// Removes what interrupted stages left behind: temporary directories and artifact
    /// directories without `manifest.json`, unless a live stage holds their key's lock.
    /// Finished artifacts are never touched.
    pub fn gc(&self) -> Result<GcReport> {
        let mut report = GcReport::default();
        for stage in dir_names(&self.root)? {
            let stage_dir = self.root.join(&stage);
            if !is_stage(&stage) || !is_real_dir(&stage_dir) {
                continue;
            }
            for name in dir_names(&stage_dir)? {
                let path = stage_dir.join(&name);
                let key = match name.strip_prefix(TMP_PREFIX) {
                    Some(rest) => rest.get(..64).filter(|_| rest[64..].starts_with('-')),
                    None => Some(name.as_str()).filter(|_| !path.join(MANIFEST_FILE).exists()),
                };
                let Some(id) = key.and_then(|k| ArtifactId::parse(k).ok()) else {
                    continue;
                };
                if !is_real_dir(&path) {
                    continue;
                }
                let (lock, lock_path) = open_lock(&stage_dir, &id)?;
                match lock.try_lock() {
                    // Re-checked under the lock: a finished artifact is never removed.
                    Ok(())
                        if path.join(MANIFEST_FILE).exists() && !name.starts_with(TMP_PREFIX) => {}
                    Ok(()) => {
                        fs::remove_dir_all(&path)
                            .with_context(|| format!("cannot remove {}", path.display()))?;
                        report.removed.push(path);
                    }
                    Err(TryLockError::WouldBlock) => report.in_use.push(path),
                    Err(TryLockError::Error(e)) => {
                        return Err(e).context(format!("cannot lock {}", lock_path.display()));
                    }
                }
            }
        }
        report.removed.sort();
        report.in_use.sort();
        Ok(report)
    }

    /// The artifact `<root>/<stage>/<id>` if that directory exists (verified), else `None`.
    fn finished(&self, stage: &str, id: &ArtifactId) -> Result<Option<Artifact>> {
        let dir = self.root.join(stage).join(id.as_str());
        match fs::symlink_metadata(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
            Ok(_) => self.open_dir(&dir, Some(stage)).map(Some),
        }
    }

    fn open_dir(&self, path: &Path, expected_stage: Option<&str>) -> Result<Artifact> {
        let not_in_store = |why: &str| StoreError::NotInStore {
            path: path.to_owned(),
            root: self.root.clone(),
            why: why.to_owned(),
        };
        let dir =
            fs::canonicalize(path).map_err(|e| not_in_store(&format!("cannot resolve it: {e}")))?;
        let rel = dir
            .strip_prefix(&self.root)
            .map_err(|_| not_in_store("it lies outside the store"))?;
        let parts: Vec<_> = rel.components().collect();
        let [Component::Normal(stage), Component::Normal(name)] = parts[..] else {
            return Err(not_in_store("artifacts are directories <root>/<stage>/<id>").into());
        };
        let (Some(stage), Some(name)) = (stage.to_str(), name.to_str()) else {
            return Err(not_in_store("not a UTF-8 path").into());
        };
        let (stage, name) = (stage.to_owned(), name.to_owned());
        if !is_stage(&stage) {
            return Err(not_in_store(&format!("{stage:?} is not a stage name")).into());
        }
        // A temporary directory is unfinished even once its manifest is written.
        if name.starts_with(TMP_PREFIX) {
            return Err(StoreError::NotFinished { dir }.into());
        }
        let id = ArtifactId::parse(&name).map_err(|e| not_in_store(&e.to_string()))?;
        if !dir.join(MANIFEST_FILE).exists() {
            return Err(StoreError::NotFinished { dir }.into());
        }
        if let Some(expected) = expected_stage.filter(|&e| e != stage) {
            return Err(StoreError::WrongStage {
                dir,
                expected: expected.to_owned(),
                found: stage,
            }
            .into());
        }
        let manifest = verify(&dir, &stage, &id, self.verify)?;
        Ok(Artifact { dir, manifest })
    }
}

/// Reads `dir`'s manifest and checks it and the directory's content against each other.
fn verify(dir: &Path, stage: &str, id: &ArtifactId, mode: Verify) -> Result<Manifest, StoreError> {
    let corrupt = |problem: String| StoreError::Corrupt {
        dir: dir.to_owned(),
        problem,
    };
    if !fs::symlink_metadata(dir.join(MANIFEST_FILE)).is_ok_and(|m| m.is_file()) {
        return Err(corrupt(format!("{MANIFEST_FILE} is not a regular file")));
    }
    let text = fs::read_to_string(dir.join(MANIFEST_FILE))
        .map_err(|e| corrupt(format!("cannot read {MANIFEST_FILE}: {e}")))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| corrupt(format!("{MANIFEST_FILE} is not a valid manifest: {e}")))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(corrupt(format!(
            "{MANIFEST_FILE} has format {:?}, this version reads {MANIFEST_FORMAT:?}",
            manifest.format
        )));
    }
    if manifest.id != *id {
        return Err(corrupt(format!(
            "{MANIFEST_FILE} says id {} but the directory is named {id}",
            manifest.id
        )));
    }
    if manifest.stage != stage {
        return Err(corrupt(format!(
            "{MANIFEST_FILE} says stage {:?} but the artifact lies under {stage}/",
            manifest.stage
        )));
    }
    // Inputs are opened by `<stage>/<id>` (e.g. the samples behind a pairs artifact): a manifest
    // must not be able to point outside the store.
    for input in &manifest.inputs {
        if !is_stage(&input.stage) || !is_hex64(&input.id) {
            return Err(corrupt(format!(
                "{MANIFEST_FILE} lists input {:?} as {:?}/{:?}, which is not a <stage>/<id> of a store",
                input.name, input.stage, input.id
            )));
        }
    }
    for (name, entry) in &manifest.files {
        if !is_file_name(name) || name == MANIFEST_FILE {
            return Err(corrupt(format!(
                "{MANIFEST_FILE} lists {name:?}, which is not a plain file name"
            )));
        }
        let path = dir.join(name);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(corrupt(format!("file {name} is missing")));
            }
            Err(e) => return Err(corrupt(format!("cannot inspect file {name}: {e}"))),
        };
        if !meta.is_file() {
            return Err(corrupt(format!("file {name} is not a regular file")));
        }
        if meta.len() != entry.bytes {
            return Err(corrupt(format!(
                "file {name} has {} bytes but {MANIFEST_FILE} says {}",
                meta.len(),
                entry.bytes
            )));
        }
        if mode == Verify::Full {
            let actual = hash_file(&path).map_err(|e| corrupt(format!("{e:#}")))?;
            if actual != entry.blake3 {
                return Err(corrupt(format!(
                    "file {name} has blake3 {actual} but {MANIFEST_FILE} says {}",
                    entry.blake3
                )));
            }
        }
    }
    let names = dir_names(dir).map_err(|e| corrupt(format!("{e:#}")))?;
    if let Some(extra) = names
        .iter()
        .find(|n| *n != MANIFEST_FILE && !manifest.files.contains_key(*n))
    {
        return Err(corrupt(format!(
            "{extra:?} is not listed in {MANIFEST_FILE}"
        )));
    }
    Ok(manifest)
}

/// Hashes and fsyncs every file a stage wrote into `dir`, attaching the reported row counts.
fn seal_files(
    dir: &Path,
    mut rows: BTreeMap<String, u64>,
    stage: &str,
) -> Result<BTreeMap<String, FileEntry>> {
    let mut files = BTreeMap::new();
    for name in dir_names(dir)? {
        let path = dir.join(&name);
        if !is_file_name(&name) || name == MANIFEST_FILE {
            bail!(
                "stage {stage} wrote {name:?} into {}; outputs must have plain file names (no '/', \
                 '\\', '..', no leading '.') other than {MANIFEST_FILE}",
                dir.display()
            );
        }
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot inspect {}", path.display()))?;
        if !meta.is_file() {
            bail!(
                "stage {stage} wrote {} which is not a regular file; outputs must be flat files",
                path.display()
            );
        }
        File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot fsync {}", path.display()))?;
        let entry = FileEntry {
            blake3: hash_file(&path)?,
            bytes: meta.len(),
            rows: rows.remove(&name),
        };
        files.insert(name, entry);
    }
    if let Some(name) = rows.keys().next() {
        bail!("stage {stage} reported row counts for {name:?}, which it did not write");
    }
    Ok(files)
}

/// Writes `manifest.json` via a temporary file, fsync and rename.
fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<()> {
    let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
    let path = dir.join(MANIFEST_FILE);
    let mut json = serde_json::to_vec_pretty(manifest)?;
    json.push(b'\n');
    let mut file =
        File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(&json)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot rename {} into place", tmp.display()))
}

/// Whether `err` comes from a full disk, an exceeded disk quota or an exceeded file-size limit:
/// an `io::Error` of kind `StorageFull`, `QuotaExceeded` or `FileTooLarge` anywhere in its chain.
/// Writers must keep the `io::Error` as a source (`.context(..)`, not a message built from it).
fn out_of_space(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::StorageFull
                    | io::ErrorKind::QuotaExceeded
                    | io::ErrorKind::FileTooLarge
            )
        })
    })
}

/// Opens (creating it) the lock file of key `id` in `stage_dir`. Lock files are never deleted,
/// so all writers of a key lock the same inode; a lock is released when its file is dropped.
fn open_lock(stage_dir: &Path, id: &ArtifactId) -> Result<(File, PathBuf)> {
    let locks = stage_dir.join(LOCKS_DIR);
    fs::create_dir_all(&locks).with_context(|| format!("cannot create {}", locks.display()))?;
    let path = locks.join(format!("{id}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    Ok((file, path))
}

/// Removes a directory when dropped, unless disarmed by taking the path out.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn check_stage(stage: &str) -> Result<(), StoreError> {
    if is_stage(stage) {
        Ok(())
    } else {
        Err(StoreError::InvalidStage(stage.to_owned()))
    }
}

/// Whether `stage` matches `[a-z0-9][a-z0-9_-]*`.
fn is_stage(stage: &str) -> bool {
    let mut bytes = stage.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Whether `name` is a plain file name: non-empty, no '/', '\\', NUL or "..", no leading '.'.
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && !name.contains("..")
}

fn is_real_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// The names of the entries of `dir` (none if it does not exist); non-UTF-8 names are kept
/// lossily converted so that they are reported rather than skipped.
fn dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        other => other.with_context(|| format!("cannot list {}", dir.display()))?,
    };
    entries
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()
        .with_context(|| format!("cannot list {}", dir.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot fsync directory {}", dir.display()))
}

/// Formats `t` as RFC 3339 UTC with second precision, e.g. `2024-05-01T12:00:00Z`.
fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, non-negative days).
    let z = days + 719_468;
    let (era, doe) = (z / 146_097, z % 146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |s| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn stage_and_file_names() {
        for ok in ["judge", "a", "0x", "sft_dpo-2"] {
            assert!(is_stage(ok), "{ok}");
        }
        for bad in ["", "Judge", "-x", "_x", "a/b", "a.b", ".locks", "é"] {
            assert!(!is_stage(bad), "{bad}");
        }
        for ok in ["rewards.parquet", "config.json", "a b"] {
            assert!(is_file_name(ok), "{ok}");
        }
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", ".hidden", "x..y", "a\0b",
        ] {
            assert!(!is_file_name(bad), "{bad}");
        }
    }
}

/// User + system CPU seconds of this process so far (all threads); `None` where not available.
fn process_cpu_seconds() -> Option<f64> {
    rusage().map(|u| {
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
        secs(u.ru_utime) + secs(u.ru_stime)
    })
}

/// This process's peak resident set size in MB (Linux reports `ru_maxrss` in KiB).
fn peak_rss_mb() -> Option<f64> {
    rusage().map(|u| u.ru_maxrss as f64 / 1024.0)
}

fn rusage() -> Option<libc::rusage> {
    // SAFETY: getrusage writes a plain C struct; a zeroed one is a valid initial value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    (unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0).then_some(u)
}
