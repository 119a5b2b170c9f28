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
    let p = repo_root().join("../shared/golden").join(name);
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (the golden files live in ../shared/golden)", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn default_model() -> &'static LoadedModel {
    static M: OnceLock<LoadedModel> = OnceLock::new();
    M.get_or_init(|| cream_lm::load(&default_model_path(), &candle_core::Device::Cpu).unwrap())
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}
