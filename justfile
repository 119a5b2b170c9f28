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

# Run the whole test suite, as CI does; extra args go to cargo test (e.g. `just test -p cream-core`).
[positional-arguments]
test *args: setup
    cargo test --release --workspace "$@"

# The loop issue replaces this body: SFT -> T CREAM iterations -> evaluation, driven by `pipeline`.
# Until the loop exists, it runs a smoke job on the default model: score three responses, chat once.
# just passes `just iterate pipeline=X` as the literal argument "pipeline=X", so strip that prefix:
# both `just iterate X` and `just iterate pipeline=X` then name config X.

# Run the self-rewarding loop for a pipeline config (for now: a smoke job on the default model).
iterate pipeline="pipelines/smoke.toml": setup
    @echo "iterate {{ trim_start_match(pipeline, "pipeline=") }}: the loop is not written yet; running the smoke job"
    target/release/cream-score --model {{ quote(default_model) }} --input tests/data/smoke_score.jsonl
    target/release/cream-chat --model {{ quote(default_model) }} --prompt "What is the capital of France?" --max-new-tokens 32

# Score each response in a JSONL file ({"id", "prompt", "response"} per line) under a model.
score model input: build
    target/release/cream-score --model {{ quote(model) }} --input {{ quote(input) }}
