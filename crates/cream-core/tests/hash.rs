//! Canonical JSON, artifact keys, ids and content hashes.

use cream_core::{
    ArtifactId, ArtifactSpec, InputRef, artifact_key, canonical_json, hash_bytes, hash_file,
};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        Just(Value::Null),
    ]
}

/// Distinct keys with values, as an insertion order.
fn entries() -> impl Strategy<Value = Vec<(String, Value)>> {
    prop::collection::btree_map("[a-zA-Z_é]{1,8}", leaf(), 1..10)
        .prop_map(|m| m.into_iter().collect())
}

/// An object built by inserting `entries` in the given order (serde_json keeps insertion order
/// with the `preserve_order` feature, so the order is visible to a naive serialiser).
fn object(entries: &[(String, Value)]) -> Value {
    Value::Object(entries.iter().cloned().collect::<Map<_, _>>())
}

fn inputs() -> Vec<InputRef> {
    ["samples", "model", "prompts"]
        .iter()
        .enumerate()
        .map(|(i, name)| InputRef {
            name: (*name).to_owned(),
            stage: "generate".to_owned(),
            id: hash_bytes(&[i as u8]),
        })
        .collect()
}

proptest! {
    #[test]
    fn key_ignores_insertion_order_of_params(
        (ordered, shuffled) in entries().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
        (inner, inner_shuffled) in entries().prop_flat_map(|e| (Just(e.clone()), Just(e).prop_shuffle())),
    ) {
        let mut a = ordered.clone();
        a.push(("nested".to_owned(), json!([object(&inner), {"b": 1, "a": 2}])));
        let mut b = shuffled.clone();
        b.insert(0, ("nested".to_owned(), json!([object(&inner_shuffled), {"a": 2, "b": 1}])));
        let (a, b) = (object(&a), object(&b));
        prop_assert_eq!(canonical_json(&a), canonical_json(&b));
        prop_assert_eq!(artifact_key("judge", 1, &a, &inputs()), artifact_key("judge", 1, &b, &inputs()));
    }

    #[test]
    fn key_changes_with_every_part(entries in entries(), which in any::<Index>(), input in any::<Index>()) {
        let params = object(&entries);
        let base = artifact_key("judge", 1, &params, &inputs());

        let mut changed = entries.clone();
        let slot = &mut changed[which.index(entries.len())].1;
        *slot = Value::String(format!("{slot}!"));
        prop_assert_ne!(&base, &artifact_key("judge", 1, &object(&changed), &inputs()));

        prop_assert_ne!(&base, &artifact_key("judge2", 1, &params, &inputs()));
        prop_assert_ne!(&base, &artifact_key("judge", 2, &params, &inputs()));

        let mut other_id = inputs();
        let i = input.index(other_id.len());
        other_id[i].id = hash_bytes(b"another file");
        prop_assert_ne!(&base, &artifact_key("judge", 1, &params, &other_id));

        let mut reordered = inputs();
        reordered.swap(i, (i + 1) % 3);
        prop_assert_ne!(&base, &artifact_key("judge", 1, &params, &reordered));

        let mut renamed = inputs();
        renamed[i].name.push('x');
        prop_assert_ne!(&base, &artifact_key("judge", 1, &params, &renamed));

        prop_assert_ne!(&base, &artifact_key("judge", 1, &params, &inputs()[..2]));
    }
}

/// Pins one artifact key. Every artifact ever published is found again by its key, so a change to
/// key derivation (the domain tag, the encoding, canonical JSON) re-keys every store: all cached
/// work is lost and no old artifact is found as an input. Such a change must be a deliberate
/// decision: bump `KEY_DOMAIN` in src/hash.rs and update the id below in the same commit.
/// (The id was computed independently, in Python with the `blake3` package, from the encoding
/// documented on `artifact_key`.)
#[test]
fn artifact_key_derivation_is_pinned() {
    let spec = ArtifactSpec {
        stage: "judge".to_owned(),
        schema_version: 1,
        params: json!({"mode": "dpo", "batch_tokens": 4096}),
        inputs: vec![
            InputRef {
                name: "samples".to_owned(),
                stage: "generate".to_owned(),
                id: hash_bytes(b"samples"),
            },
            InputRef {
                name: "reference".to_owned(),
                stage: "source".to_owned(),
                id: hash_bytes(b"model.gguf"),
            },
        ],
    };
    assert_eq!(
        spec.id().as_str(),
        "c94c19e6b519b9f546b1aa7a5049ebe428ab7432592176e661bbcab6e0465369"
    );
}

#[test]
fn canonical_json_sorts_keys_at_every_depth_and_is_compact() {
    let v = json!({"b": [1, {"z": null, "a": "x\"y"}], "a": 1.5, "é": true, "B": -0});
    assert_eq!(
        canonical_json(&v),
        r#"{"B":0,"a":1.5,"b":[1,{"a":"x\"y","z":null}],"é":true}"#
    );
}

#[test]
fn key_encoding_is_unambiguous() {
    let id = hash_bytes(b"x");
    let input = |name: &str, stage: &str| InputRef {
        name: name.into(),
        stage: stage.into(),
        id: id.clone(),
    };
    let p = json!({});
    assert_ne!(
        artifact_key("s", 1, &p, &[input("ab", "c")]),
        artifact_key("s", 1, &p, &[input("a", "bc")])
    );
    assert_ne!(
        artifact_key("ab", 1, &json!("c"), &[]),
        artifact_key("a", 1, &json!("bc"), &[])
    );
    assert_ne!(
        artifact_key("s", 1, &json!(1), &[]),
        artifact_key("s", 1, &json!(1.0), &[])
    );
    assert_eq!(artifact_key("s", 1, &p, &[]).as_str().len(), 64);
}

#[test]
fn artifact_id_accepts_only_64_lowercase_hex() {
    let good = hash_bytes(b"");
    assert_eq!(ArtifactId::parse(&good).unwrap().as_str(), good);
    let bad = [
        String::new(),
        good[..63].to_owned(),
        format!("{good}0"),
        good.to_uppercase(),
        format!("{}g", &good[..63]),
        "../../etc".to_owned(),
        format!("../{}", &good[..61]),
        format!("{}/", &good[..63]),
    ];
    for s in bad {
        assert!(ArtifactId::parse(&s).is_err(), "{s:?} was accepted");
        assert!(
            serde_json::from_value::<ArtifactId>(Value::String(s.clone())).is_err(),
            "{s:?}"
        );
    }
    let round: ArtifactId = serde_json::from_value(json!(good)).unwrap();
    assert_eq!(serde_json::to_value(&round).unwrap(), json!(good));
}

#[test]
fn file_hash_streams_and_matches_bytes_hash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    assert_eq!(hash_file(&path).unwrap(), hash_bytes(&data));
    assert_eq!(hash_bytes(b"abc"), blake3::hash(b"abc").to_hex().as_str());
    let source = InputRef::source("model", &path).unwrap();
    assert_eq!(
        (source.stage.as_str(), source.id),
        ("source", hash_bytes(&data))
    );
    let err = hash_file(&dir.path().join("missing")).unwrap_err();
    assert!(format!("{err:#}").contains("missing"), "{err:#}");
}
