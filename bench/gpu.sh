#!/usr/bin/env bash
# The GPU side of issue 4, for a machine with an NVIDIA GPU, python3 with torch + transformers, no
# Rust toolchain and no network. Runs a prebuilt `cream-bench` (built with `--features cuda`):
#   1. the golden-vector check on the GPU (cream-bench golden; tolerances as on the CPU);
#   2. export of the default model to HF layout, then bench/run.py --device cuda: every workload,
#      cream vs PyTorch eager on the same GPU, default model;
#   3. the same with a randomly initialised model of a realistic shape (default llama3-8b-2l:
#      Llama-3-8B with 2 layers, ~1.5B parameters) to show scaling.
# Everything lands in $OUT (results-gpu-*.md/.json, golden.json, gpu.log).
#
# Env:
#   CREAM_BENCH   the cuda cream-bench binary (may be gzipped: *.gz)
#   CREAM_GGUF    the default model's GGUF, or its pieces joined with ':' (concatenated in order)
#   CREAM_GGUF_SHA256  optional: checked after joining the pieces
#   CREAM_GOLDEN  the golden dir (../shared/golden)
#   CREAM_INPUTS  inputs.json made on the CPU (`cream-bench inputs`; needs no GSM8K here)
#   OUT           output dir (default bench/work/gpu)
#   CREAM_DEVICE  cuda (default) | cpu: a CPU rehearsal with a CPU build
#   CREAM_SHAPE   the random shape (default llama3-8b-2l; empty: skip step 3)
#   CREAM_REPEAT  measured runs per process (default 3); CREAM_COMMIT: the git commit, for the header
#   CREAM_QUICK=1 tiny workloads (rehearsal); CREAM_WORKLOADS: run.py --workloads for the default model;
#   CREAM_SHAPE_WORKLOADS: the same for the random shape
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-bench/work/gpu}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu.log") 2>&1
DEVICE=${CREAM_DEVICE:-cuda}
SHAPE=${CREAM_SHAPE-llama3-8b-2l}
REPEAT=${CREAM_REPEAT:-3}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/cream-gpu.XXXXXX)
t0=$SECONDS
step() { echo "== gpu.sh [$((SECONDS - t0))s] $*"; }

BIN=$CREAM_BENCH
if [[ $BIN == *.gz ]]; then
    gunzip -c "$BIN" > "$WORK/cream-bench"
    BIN=$WORK/cream-bench
fi
chmod +x "$BIN" 2>/dev/null || { cp "$BIN" "$WORK/cream-bench" && chmod +x "$WORK/cream-bench" && BIN=$WORK/cream-bench; }

GGUF=$CREAM_GGUF
if [[ $GGUF == *:* ]]; then
    IFS=: read -r -a parts <<< "$GGUF"
    cat "${parts[@]}" > "$WORK/model.gguf"
    GGUF=$WORK/model.gguf
fi
if [[ -n ${CREAM_GGUF_SHA256:-} ]]; then
    echo "$CREAM_GGUF_SHA256  $GGUF" | sha256sum -c --quiet || { echo "model checksum mismatch"; exit 1; }
fi

# The CUDA user-space libraries (cuBLAS, cuRAND, the runtime) come with PyTorch's wheels.
SITE=$("$PY" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')
for d in "$SITE"/nvidia/cu13/lib "$SITE"/nvidia/*/lib; do
    [[ -d $d ]] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
export CREAM_DEVICE=$DEVICE
[[ $DEVICE == cuda ]] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; }
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "transformers", transformers.__version__)'

step "golden check on $DEVICE"
golden_rc=0
"$BIN" golden --model "$GGUF" --golden "$CREAM_GOLDEN" > "$OUT/golden.json" || golden_rc=$?
step "golden exit code $golden_rc"

step "export"
"$BIN" export --model "$GGUF" --out "$WORK/smollm2-hf" > /dev/null

common=(--cream "$BIN" --python "$PY" --device "$DEVICE" --reps 1 --repeat "$REPEAT" --warmup full
        --probes start --timeout 240 --commit "${CREAM_COMMIT:-?}")
[[ ${CREAM_QUICK:-0} == 1 ]] && common+=(--quick)
rc=0
step "default model: cream vs PyTorch on $DEVICE"
"$PY" bench/run.py "${common[@]}" --model "$GGUF" --hf "$WORK/smollm2-hf" --inputs "$CREAM_INPUTS" \
    ${CREAM_WORKLOADS:+--workloads "$CREAM_WORKLOADS"} --out "$OUT/results-gpu-smollm2.md" > /dev/null || rc=$?
if [[ -n $SHAPE ]]; then
    step "random $SHAPE: cream vs PyTorch on $DEVICE"
    "$PY" bench/run.py "${common[@]}" --random-shape "$SHAPE" --inputs "$WORK/inputs-$SHAPE.json" \
        --workloads "${CREAM_SHAPE_WORKLOADS:-gen-b16,gen-b64,score,dpo}" --out "$OUT/results-gpu-$SHAPE.md" > /dev/null || rc=$?
fi
step "done (golden $golden_rc, bench $rc)"
cat "$OUT"/results-gpu-*.md 2>/dev/null | grep -E "^\| (gen|score|dpo)" || true
rm -rf "$WORK"
exit $(( golden_rc != 0 ? golden_rc : rc ))
