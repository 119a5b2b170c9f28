//! Fuzzing (see tests/fuzz_support): the manifest parser and the Parquet readers take mutated
//! bytes and answer with an error, never a panic. `just fuzz` runs these for longer.

#[path = "../../../tests/fuzz_support/mod.rs"]
mod fuzz_support;

use std::fs;

use cream_core::{ArtifactSpec, ProduceOutput, SampleRow, Store, StoreError, read_table, write_table};
use fuzz_support::{fuzz, mutate};
use proptest::prelude::*;
use serde_json::json;

fn edits() -> impl Strategy<Value = Vec<(f64, u8, u8)>> {
    prop::collection::vec((0.0..1.0f64, any::<u8>(), any::<u8>()), 1..6)
}

fn samples() -> Vec<SampleRow> {
    (0..5)
        .map(|i| SampleRow {
            prompt_id: format!("p{i}"),
            sample_idx: i,
            prompt: "Tom has 3 apples <|im_end|> ✓".into(),
            response: "He has 3.".repeat(i as usize),
            token_ids: (0..i * 3).collect(),
            prompt_tokens: i,
            response_tokens: 2 * i,
            finish_reason: "stop".into(),
            seed: u64::from(i) << 40,
        })
        .collect()
}

#[test]
fn fuzz_manifest_parser() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let spec = ArtifactSpec { stage: "generate".into(), schema_version: 1, params: json!({"n": 3}), inputs: vec![] };
    let a = store
        .produce(&spec, "t", "cpu", |d| {
            let n = write_table(&d.join("samples.parquet"), &samples())?;
            Ok(ProduceOutput::default().with_rows("samples.parquet", n))
        })
        .unwrap()
        .artifact;
    let path = a.dir.join("manifest.json");
    let good = fs::read(&path).unwrap();
    let dir = a.dir.to_str().unwrap().to_owned();
    fuzz("manifest", edits(), |e| {
        fs::write(&path, mutate(&good, &e)).unwrap();
        match store.open_artifact(&dir, Some("generate")) {
            // An edit the store accepts (whitespace, a descriptive field such as a row count or
            // a parameter: the manifest is not hashed) must leave what it verifies unchanged.
            Ok(b) => {
                let verified = |m: &cream_core::Manifest| -> Vec<(String, String, u64)> {
                    m.files.iter().map(|(n, f)| (n.clone(), f.blake3.clone(), f.bytes)).collect()
                };
                prop_assert_eq!(verified(&b.manifest), verified(&a.manifest));
                prop_assert_eq!(&b.manifest.id, &a.manifest.id);
            }
            Err(err) => prop_assert!(
                matches!(err.downcast_ref(), Some(StoreError::Corrupt { .. })),
                "{err:#}"
            ),
        }
        Ok(())
    });
}

/// Mutations that once made the reader panic (inside the parquet crate).
#[test]
fn parquet_reader_regressions() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("samples.parquet");
    write_table(&path, &samples()).unwrap();
    let good = fs::read(&path).unwrap();
    for edits in [[(0.5302606221816638, 200, 5)]] {
        fs::write(&path, mutate(&good, &edits)).unwrap();
        let err = read_table::<SampleRow>(&path).unwrap_err();
        assert!(format!("{err:#}").contains("samples.parquet"), "{err:#}");
    }
}

#[test]
fn fuzz_parquet_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("samples.parquet");
    write_table(&path, &samples()).unwrap();
    let good = fs::read(&path).unwrap();
    fuzz("parquet", edits(), |e| {
        fs::write(&path, mutate(&good, &e)).unwrap();
        // Ok (a flip inside a value can go unnoticed: the store's blake3 catches that) or Err,
        // never a panic.
        if let Err(err) = read_table::<SampleRow>(&path) {
            prop_assert!(format!("{err:#}").contains("samples.parquet"), "{err:#}");
        }
        Ok(())
    });
}
