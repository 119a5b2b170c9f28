#!/usr/bin/env bash
# `just bench [run.py flags]`: cream against PyTorch + transformers and llama.cpp on this machine
# (bench/README.md). Sets up bench/.venv (pinned torch + transformers from PyPI) once, builds
# cream-bench (release), exports the default model to Hugging Face layout and writes the workloads'
# inputs once, builds llama.cpp and converts the export to GGUF once (bench/llamacpp.sh), then runs
# bench/run.py, which writes bench/results.md and bench/results.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

MODEL=${CREAM_BENCH_MODEL:-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}
GSM8K=${CREAM_SHARED:-../shared}/data/gsm8k
VENV=bench/.venv
WORK=bench/work
TARGET=${CARGO_TARGET_DIR:-target}
BIN=$TARGET/release/cream-bench

[[ -f $MODEL ]] || bash scripts/setup.sh

# The baseline's Python stack. PyPI's only Linux x86-64 torch wheel is the CUDA build: it does not
# import without its nvidia-* libraries, so they come along (~2.8 GB download, ~4.9 GB installed).
if ! "$VENV/bin/python" -c "import torch, transformers, safetensors" 2>/dev/null; then
    echo "== bench: installing the PyTorch baseline into $VENV (once; ~2.8 GB download)" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r bench/requirements.txt
    "$VENV/bin/python" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" >&2
fi

echo "== bench: building cream-bench (release)" >&2
cargo build --release -q -p cream-bench --bin cream-bench

mkdir -p "$WORK"
# Exported weights and inputs are remade when the model or the binary is newer than them.
if [[ ! -f $WORK/smollm2-hf/model.safetensors || $MODEL -nt $WORK/smollm2-hf/model.safetensors ]]; then
    echo "== bench: exporting $MODEL to $WORK/smollm2-hf" >&2
    "$BIN" export --model "$MODEL" --out "$WORK/smollm2-hf" >/dev/null
fi
if [[ ! -f $WORK/inputs.json || $BIN -nt $WORK/inputs.json || $MODEL -nt $WORK/inputs.json ]]; then
    echo "== bench: writing $WORK/inputs.json" >&2
    "$BIN" inputs --model "$MODEL" --gsm8k "$GSM8K" --out "$WORK/inputs.json.tmp" >/dev/null
    mv "$WORK/inputs.json.tmp" "$WORK/inputs.json"
fi

# llama.cpp, the third column (generation and scoring): built and converted once by bench/llamacpp.sh.
# Without it (no network, no compiler) run.py runs the other two and says so in the table's header.
if [[ " $* " != *" --no-llamacpp "* && " $* " != *" --random-shape"* ]]; then
    PYTHON=$VENV/bin/python CREAM_HF=$WORK/smollm2-hf bash bench/llamacpp.sh ||
        echo "== bench: bench/llamacpp.sh failed; running without the llama.cpp column" >&2
fi

exec python3 bench/run.py --cream "$BIN" --python "$VENV/bin/python" --model "$MODEL" \
    --hf "$WORK/smollm2-hf" --inputs "$WORK/inputs.json" "$@"
