# cream: the pipeline. Recipes chain the stage binaries in target/release by artifact path.
# Bootstrap: `bash scripts/ensure-just.sh` installs just itself if it is missing.

set shell := ["bash", "-euo", "pipefail", "-c"]
set dotenv-load := false

# Where stages publish artifacts (artifacts/<stage>/<key>/); exported to every recipe's binaries.
artifacts_dir := env_var_or_default("CREAM_ARTIFACTS", "artifacts")
export CREAM_ARTIFACTS := artifacts_dir

# The default model that `just setup` fetches (see data/README.md).
default_model := "data/models/SmolLM2-135M-Instruct.Q4_1.gguf"

# List the recipes.
default:
    @{{ just_executable() }} --list --unsorted

# Fetch the default model and data sets into data/, then build the release binaries.
setup:
    bash scripts/setup.sh
    cargo build --release --workspace

# Build the release binaries into target/release.
build:
    cargo build --release --workspace

# Run the whole test suite, as CI does: the fast tests and the ones marked #[ignore] because they
# need `just setup`'s model and data (plain `cargo test` runs only the fast ones). Extra args go to
# cargo test (e.g. `just test -p cream-core`, `just test -p cream-lm -- --nocapture`).
[positional-arguments]
test *args: check-deps setup setup-slurm
    if [[ " $* " == *" -- "* ]]; then cargo test --release --workspace "$@" --include-ignored; \
    else cargo test --release --workspace "$@" -- --include-ignored; fi

# scripts/check-deps.sh: cargo-machete (pinned, installed when missing) over every crate, and every
# [workspace.dependencies] entry must be used by some member. `just test` runs it first.

# Fail on an unused dependency.
check-deps:
    bash scripts/check-deps.sh

# The cost of portable binaries: the default build against `-C target-cpu=native` on score, dpo
# and gen-b16, alternating (bench/portable.sh; writes bench/portable.md). Not part of `just test`.
bench-portable: setup
    bash bench/portable.sh

# Fuzz the manifest parser, the Parquet reader, the answer extractors and the chat-template input
# path for FUZZ_SECS seconds each (default 60; not part of `just test`, which runs one quick round).
fuzz secs=env_var_or_default("FUZZ_SECS", "60"):
    FUZZ_SECS={{ secs }} cargo test --release -p cream-core --test fuzz -- --test-threads 1 --nocapture
    FUZZ_SECS={{ secs }} cargo test --release -p cream-algo --test fuzz -- --test-threads 1 --nocapture
    FUZZ_SECS={{ secs }} cargo test --release -p cream-lm --test fuzz_chat -- --test-threads 1 --nocapture

# Where cargo puts binaries (.ci/run points CARGO_TARGET_DIR at a build cache).
# CREAM_BIN overrides it (e.g. a copy of the binaries, so a long run is not affected by rebuilds).
bin := env_var_or_default("CREAM_BIN", env_var_or_default("CARGO_TARGET_DIR", "target") + "/release")

# Args: packages or package:bin,bin (default: every package with a `cuda` feature); README "CUDA build".
# Build the `cuda` feature (no GPU needed here) into dist/cuda/ for a GPU machine.
[positional-arguments]
build-cuda *args:
    bash scripts/build-cuda.sh "$@"

# SFT (M0 -> M1), then per iteration generate -> judge (current, previous) -> consistency ->
# pair -> train, then the consistency of the final models, eval of every M_t and a report
# (scripts/iterate.sh). Every stage is cached: a rerun with nothing changed is all cache hits.
# Args: [pipeline=]CONFIG (default pipelines/smoke.toml) and executor=local|slurm (default
# $CREAM_EXECUTOR, else local; slurm: README "Running on a Slurm cluster"), in any order.

# Run the self-rewarding loop: `just iterate [pipeline=]CONFIG [executor=slurm]`.
[positional-arguments]
iterate *args: setup
    bash scripts/iterate.sh {{ quote("bin=" + bin) }} "$@"

# Install Debian's Slurm daemons and clients for tests/slurm.rs (root; a no-op if present).
setup-slurm:
    bash scripts/slurm-local.sh install

# The CREAM vs SRLM experiment (results/README.md). The two arms run side by side, one process
# each with CREAM_EXPERIMENT_THREADS threads (default 1: two single-threaded processes keep both
# cores of a 2-core machine busy); work identical in both arms is computed once (the first to
# take an artifact's lock produces it, the other reuses it). Phases: both training loops, then
# the log-likelihood evaluations (results written), then the generative ones (results rewritten).
# Cached: an interrupted run resumes, a finished one reruns as all cache hits. Logs: OUT/logs/.
experiment out="results": setup
    #!/usr/bin/env bash
    set -euo pipefail
    bin={{ quote(bin) }}
    out={{ quote(out) }}
    arms=(pipelines/experiment-cream.toml pipelines/experiment-srlm.toml)
    mkdir -p "$out/logs"
    phase() {
        local until=$1 pids=() cfg order=forward
        for cfg in "${arms[@]}"; do
            local log="$out/logs/$(basename "$cfg" .toml).$until"
            CREAM_ITERATE_UNTIL=$until CREAM_EVAL_ORDER=$order RAYON_NUM_THREADS=${CREAM_EXPERIMENT_THREADS:-1} \
                bash scripts/iterate.sh "pipeline=$cfg" "bin=$bin" >"$log.out" 2>"$log.err" &
            pids+=($!)
            order=reverse # the second arm evaluates its models last first (see scripts/iterate.sh)
        done
        for i in "${!pids[@]}"; do
            wait "${pids[$i]}" || { echo "experiment: ${arms[$i]} failed in phase $until; see $out/logs/" >&2; exit 1; }
        done
        echo "experiment: phase $until done ($(date -u +%H:%M:%S))" >&2
    }
    compare() {
        local reports=() cfg
        for cfg in "${arms[@]}"; do
            reports+=(--arm "$cfg=$(tail -n 1 "$out/logs/$(basename "$cfg" .toml).$1.out")")
        done
        "$bin/cream-experiment" --quiet "${reports[@]}" --out "$out"
    }
    phase loop
    phase mc
    compare mc
    phase all
    compare all

# The per-iteration report of a pipeline run (reruns `iterate`, which is all cache hits).
report pipeline="pipelines/smoke.toml": (iterate pipeline)

# `cream-report --list`: date, pipeline name, iterations, models evaluated, config, report directory.

# List the pipeline runs in the store (CREAM_ARTIFACTS), newest first.
runs: build
    {{ quote(bin) }}/cream-report --list

# Remove temporary directories left by interrupted stages (finished artifacts are kept).
gc: build
    {{ quote(bin) }}/cream-gc

# Rerun one stage by hand; each takes --help (e.g. `just generate --help`).
[positional-arguments]
prepare *args: build
    {{ quote(bin) }}/cream-prepare "$@"

# Sample responses: `just generate --prompts A --model M --iteration T [--config P]`.
[positional-arguments]
generate *args: build
    {{ quote(bin) }}/cream-generate "$@"

# Rewards: `just judge --samples A --mode dpo --policy M --reference M0 [--config P]`.
[positional-arguments]
judge *args: build
    {{ quote(bin) }}/cream-judge "$@"

# Ranking consistency: `just consistency --current A --previous B [--config P]`.
[positional-arguments]
consistency *args: build
    {{ quote(bin) }}/cream-consistency "$@"

# Preference pairs: `just pair --samples A --rewards R [--consistency C] [--config P]`.
[positional-arguments]
pair *args: build
    {{ quote(bin) }}/cream-pair "$@"

# Training: `just train sft --prompts A --model M0` or `just train dpo --pairs A --model M`.
[positional-arguments]
train *args: build
    {{ quote(bin) }}/cream-train "$@"

# Evaluation: `just eval --prompts A --model M [--config P]`.
[positional-arguments]
eval *args: build
    {{ quote(bin) }}/cream-eval "$@"

# Benchmark cream against PyTorch + transformers and llama.cpp on this machine, side by side
# (bench/README.md): installs bench/.venv and builds llama.cpp into bench/work once, writes
# bench/results.md. `just bench --quick` is a smoke run; other flags go to bench/run.py (e.g.
# `just bench --threads 1 --reps 5`, `--no-llamacpp`). Not part of `just test`.
[positional-arguments]
bench *args:
    bash bench/bench.sh "$@"

# Score each response in a JSONL file ({"id", "prompt", "response"} per line) under a model.
score model input: build
    {{ quote(bin) }}/cream-score --model {{ quote(model) }} --input {{ quote(input) }}
