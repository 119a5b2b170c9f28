//! Stages are peers: no stage module uses another stage's module, and the shared modules use no
//! stage module (ARCHITECTURE.md, "Invariants"). What stages share (stage and file names, the
//! `score` sub-stage, polars helpers, manifest statistics, sharding) lives in the shared modules.
//!
//! This test reads the library's sources: every module declared in `src/lib.rs` must be listed
//! below as a stage or as shared, and every `crate::<module>` path in a module's files (code, not
//! comments) must name itself or a shared module.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Stage modules: one per stage (or stage method), none may use another.
const STAGES: &[&str] =
    &["prepare", "generate", "judge", "consistency", "pair", "train", "eval", "eval_mc", "report", "experiment"];
/// Modules every stage may use; they use no stage module.
const SHARED: &[&str] = &["config", "ctx", "progress", "shard", "names", "frame", "score", "summary", "grade"];

/// The module names after `crate::` in `code` (comments already removed), each with the byte
/// offset of its `crate::`: `crate::a::b` gives `a`, `crate::{a, b::c}` gives `a` and `b`.
fn crate_refs(code: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i;
        let before = code[..start].chars().next_back();
        at = start + "crate::".len();
        let rest = &code[at..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue; // e.g. `my_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: the first segment of each comma-separated item.
            let mut depth = 0usize;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        out.push((start, ident(&group[j..])));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push((start, ident(rest)));
        }
    }
    out
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// `text` without `//` comments (line, doc and inner doc comments).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| if l.trim_start().starts_with("//") { "" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The source files of module `name`: `src/<name>.rs` and everything under `src/<name>/`.
fn module_files(src: &Path, name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let file = src.join(format!("{name}.rs"));
    if file.exists() {
        files.push(file);
    }
    let mut dirs = vec![src.join(name)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// The modules `src/lib.rs` declares (`mod x;` / `pub mod x;` / `pub(crate) mod x;`).
fn declared_modules(lib: &str) -> BTreeSet<String> {
    code_of(lib)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix("pub(crate) mod ").or_else(|| l.strip_prefix("pub mod ")).or_else(|| l.strip_prefix("mod "))?;
            rest.strip_suffix(';').map(str::to_string)
        })
        .collect()
}

/// Every use of a forbidden module: `file:line: crate::<name> (...)`.
fn violations(src: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for module in STAGES.iter().chain(SHARED) {
        let is_stage = STAGES.contains(module);
        for file in module_files(src, module) {
            let text = std::fs::read_to_string(&file).unwrap();
            let code = code_of(&text);
            for (at, used) in crate_refs(&code) {
                if used == *module || SHARED.contains(&used.as_str()) {
                    continue;
                }
                let line = 1 + code[..at].matches('\n').count();
                let kind = if is_stage { "stage" } else { "shared" };
                out.push(format!(
                    "{}:{line}: crate::{used}: {kind} module `{module}` uses stage module `{used}`",
                    file.display()
                ));
            }
        }
    }
    out
}

#[test]
fn no_stage_module_uses_another() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "stages are peers: move what they share (names, helpers) into a shared module ({}) and use \
         it from there:\n{}",
        SHARED.join(", "),
        found.join("\n")
    );
}

#[test]
fn every_module_is_a_stage_or_shared() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let declared = declared_modules(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let known: BTreeSet<String> = STAGES.iter().chain(SHARED).map(|s| s.to_string()).collect();
    assert_eq!(
        declared, known,
        "src/lib.rs declares modules this test does not classify (or the reverse): list each new \
         module in STAGES or SHARED in tests/layering.rs"
    );
    for m in &known {
        assert!(!module_files(&src, m).is_empty(), "module {m} has no source file under {}", src.display());
    }
}

/// The names of [`crate_refs`] without offsets.
fn refs(code: &str) -> Vec<String> {
    crate_refs(code).into_iter().map(|(_, name)| name).collect()
}

#[test]
fn crate_paths_are_found_in_every_form() {
    assert_eq!(refs("use crate::judge::score;"), ["judge"]);
    assert_eq!(refs("let s = crate::generate::STAGE; x(crate::names::stage::PAIR)"), ["generate", "names"]);
    assert_eq!(refs("use crate::{config::Pipeline, judge, names::{file, stage}};"), ["config", "judge", "names"]);
    assert_eq!(refs("use crate::{\n    ctx::Ctx,\n    pair,\n};"), ["ctx", "pair"]);
    assert!(refs("my_crate::judge::x; cream_core::read_table").is_empty());
    assert_eq!(code_of("/// see [`crate::judge::run`]\nuse crate::ctx;"), "\nuse crate::ctx;");
    assert_eq!(
        declared_modules("//! doc\npub mod a;\nmod b;\npub(crate) mod c;\n// mod d;\n"),
        BTreeSet::from(["a".to_string(), "b".into(), "c".into()])
    );
}
