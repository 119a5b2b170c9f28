#!/usr/bin/env bash
# Pack what bench/gpu.sh needs for the lent GPU machine, which takes at most 64 MiB per call: the
# default model's GGUF alone is 94 MiB, so it travels in two pieces, one per call, on the same warm
# machine (given back after ~30 s idle: make the second call right after the first).
#   DEST/.gpu/a: model.part1 (56 MiB)
#   DEST/.gpu/b: model.part2, cream-bench.gz (the cuda build), inputs.json, golden/, bench/ (scripts)
# DEST (default: this checkout) is the checkout the device tool sends; .gpu is added to its
# .git/info/exclude so that it travels only when a call carries it.
# Usage: bash bench/gpu-pack.sh CUDA_CREAM_BENCH_BINARY [DEST]   (then make the two calls it prints)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BIN=$(realpath "${1:?usage: gpu-pack.sh CUDA_CREAM_BENCH_BINARY [DEST]}")
DEST=$(realpath "${2:-.}")
MODEL=${CREAM_BENCH_MODEL:-data/models/SmolLM2-135M-Instruct.Q4_1.gguf}
INPUTS=${CREAM_INPUTS:-bench/work/inputs.json}
GOLDEN=${CREAM_SHARED:-../shared}/golden
[[ -f $INPUTS ]] || { echo "$INPUTS is missing: run \`just bench --quick\` (or cream-bench inputs) first" >&2; exit 1; }
G=$DEST/.gpu
rm -rf "$G" && mkdir -p "$G/a" "$G/b/golden" "$G/b/bench"
head -c $((56 << 20)) "$MODEL" > "$G/a/model.part1"
tail -c +$(((56 << 20) + 1)) "$MODEL" > "$G/b/model.part2"
gzip -c "$BIN" > "$G/b/cream-bench.gz"
cp "$INPUTS" "$G/b/inputs.json"
cp "$GOLDEN"/smollm2_logprobs.json "$GOLDEN"/smollm2_dpo.json "$G/b/golden/"
cp bench/gpu.sh bench/run.py bench/baseline.py "$G/b/bench/"
cp Cargo.lock "$G/b/"  # run.py reads the candle version from it
if ! git -C "$DEST" check-ignore -q .gpu/a/model.part1; then
    exclude=$(git -C "$DEST" rev-parse --path-format=absolute --git-common-dir)/info/exclude
    echo '/.gpu/' >> "$exclude"
fi
sha=$(sha256sum "$MODEL" | cut -d' ' -f1)
du -sh "$G/a" "$G/b"
cat <<MSG
First call  (carry [".gpu/a"], a few seconds):
  mkdir -p /tmp/cream-carry && cp .gpu/a/model.part1 /tmp/cream-carry/
Second call (carry [".gpu/b"], right after, timeout_s ~480):
  R=\$PWD; p1=\$R/.gpu/a/model.part1; [ -f \$p1 ] || p1=/tmp/cream-carry/model.part1; CREAM_BENCH=\$R/.gpu/b/cream-bench.gz CREAM_GGUF=\$p1:\$R/.gpu/b/model.part2 CREAM_GGUF_SHA256=$sha CREAM_GOLDEN=\$R/.gpu/b/golden CREAM_INPUTS=\$R/.gpu/b/inputs.json CREAM_COMMIT=$(git rev-parse --short HEAD) bash .gpu/b/bench/gpu.sh
MSG
