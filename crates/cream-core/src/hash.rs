//! Canonical JSON, artifact keys and blake3 content hashes.
//!
//! An artifact's key is a pure function of what produced it: the stage name, the stage's schema
//! version, its canonical parameters and the ids of its inputs (in order, with their roles).
//! Because an input artifact's id is itself such a key, any upstream change yields a new key
//! downstream.

use std::fmt;
use std::fs::File;
use std::path::Path;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Domain-separation tag hashed before every artifact key, so keys never collide with hashes of
/// anything else; bump it if the encoding below ever changes.
const KEY_DOMAIN: &[u8] = b"cream-artifact-key/1";

/// The id of an artifact: 64 lowercase hex digits (a blake3 hash).
///
/// Ids become directory names, so [`ArtifactId::parse`] (also used by `FromStr` and serde) accepts
/// nothing else; this is the store's guard against path traversal through ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ArtifactId(String);

impl ArtifactId {
    /// Parses an id, rejecting anything but exactly 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<Self> {
        if is_hex64(s) {
            Ok(Self(s.to_owned()))
        } else {
            bail!("{s:?} is not an artifact id (expected 64 lowercase hex digits)")
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` is exactly 64 lowercase hex digits, the shape of every blake3 hex digest.
pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl fmt::Display for ArtifactId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ArtifactId {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ArtifactId {
    type Error = anyhow::Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<ArtifactId> for String {
    fn from(id: ArtifactId) -> Self {
        id.0
    }
}

impl AsRef<str> for ArtifactId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// One input of an artifact: what role it plays and which content it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRef {
    /// The role of the input for the consuming stage, e.g. `"samples"`, `"model"`, `"prompts"`.
    pub name: String,
    /// The producing stage, or `"source"` for an external file (a model file, a jsonl).
    pub stage: String,
    /// The input artifact's id, or the blake3 hex of the source file.
    pub id: String,
}

impl InputRef {
    /// An input that is an external file: stage `"source"`, id the blake3 of its content.
    pub fn source(name: &str, path: &Path) -> Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            stage: "source".to_owned(),
            id: hash_file(path)?,
        })
    }
}

/// Serialises `value` as canonical JSON: object keys sorted (by UTF-8 bytes) at every depth, no
/// whitespace, strings and numbers exactly as `serde_json` prints them.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The key of the artifact that `stage` (at `schema_version`) produces from `params` and
/// `inputs`.
///
/// blake3 over an unambiguous encoding: a domain tag, then every string length-prefixed (u64 LE),
/// the schema version as u32 LE, the canonical JSON of `params`, the number of inputs and each
/// input's name, stage and id, in the given order.
pub fn artifact_key(
    stage: &str,
    schema_version: u32,
    params: &Value,
    inputs: &[InputRef],
) -> ArtifactId {
    fn put(h: &mut blake3::Hasher, bytes: &[u8]) {
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    let mut h = blake3::Hasher::new();
    put(&mut h, KEY_DOMAIN);
    put(&mut h, stage.as_bytes());
    h.update(&schema_version.to_le_bytes());
    put(&mut h, canonical_json(params).as_bytes());
    h.update(&(inputs.len() as u64).to_le_bytes());
    for input in inputs {
        put(&mut h, input.name.as_bytes());
        put(&mut h, input.stage.as_bytes());
        put(&mut h, input.id.as_bytes());
    }
    ArtifactId(h.finalize().to_hex().to_string())
}

/// The blake3 hex digest of `bytes`.
pub fn hash_bytes(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// The blake3 hex digest of the file at `path`, read in a streaming fashion.
pub fn hash_file(path: &Path) -> Result<String> {
    let mut file =
        File::open(path).with_context(|| format!("cannot open {} to hash it", path.display()))?;
    let mut h = blake3::Hasher::new();
    h.update_reader(&mut file)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(h.finalize().to_hex().to_string())
}
