//! Shared test fixtures: the default model (fetched by `just setup`) and the golden files.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

use cream_lm::LoadedModel;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn default_model_path() -> PathBuf {
    let p = repo_root().join("data/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run `just setup` first", p.display());
    p
}

pub fn golden(name: &str) -> serde_json::Value {
    cream_lm::golden::read(&repo_root().join("../shared/golden").join(name)).unwrap()
}

pub fn default_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| cream_lm::load(&default_model_path(), &candle_core::Device::Cpu).unwrap())
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    cream_lm::golden::u32s(v).unwrap()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    cream_lm::golden::f64s(v).unwrap()
}
