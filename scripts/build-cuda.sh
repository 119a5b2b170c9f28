#!/usr/bin/env bash
# Build the `cuda` feature here (no GPU, no system CUDA needed) and package the binaries for a GPU
# machine into dist/cuda/.
#
#   bash scripts/build-cuda.sh                              # every workspace package with a bin and a `cuda` feature
#   bash scripts/build-cuda.sh cream-cli                    # one package, all its binaries
#   bash scripts/build-cuda.sh cream-cli:cream-train,cream-score   # some binaries of a package
#
# Environment:
#   CREAM_CUDA_TARGET_DIR  cargo target dir (default ~/.cache/cream/target-cuda; kept apart from the
#                          CPU build, whose RUSTFLAGS differ)
#   CREAM_CUDA_TARGET_CPU  -C target-cpu (default x86-64-v3: the binary must run on another CPU;
#                          this overrides .cargo/config.toml's `native`)
#   CUDA_COMPUTE_CAP       GPU architecture of the kernels (default 90: H100/H200)
#   CREAM_CUDA_PREFIX, CREAM_CUDA_WHEELS   see scripts/cuda-toolchain.sh
#
# If the link reports undefined CUDA functions (a newer candle / cudarc uses more of them), they
# are appended to scripts/cuda-stubs.txt, the stubs are regenerated and the link is redone once.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

eval "$(bash scripts/cuda-toolchain.sh)"
export CARGO_TARGET_DIR=${CREAM_CUDA_TARGET_DIR:-$HOME/.cache/cream/target-cuda}
export RUSTFLAGS="-C target-cpu=${CREAM_CUDA_TARGET_CPU:-x86-64-v3}"
say() { echo "build-cuda: $*" >&2; }

meta=$(cargo metadata --no-deps --format-version 1)
# "package bin" for every binary of the workspace packages that have a `cuda` feature
all_bins=$(python3 -c '
import json, sys
m = json.load(sys.stdin)
for p in m["packages"]:
    if "cuda" in p["features"]:
        for t in p["targets"]:
            if "bin" in t["kind"]:
                print(p["name"], t["name"])
' <<<"$meta")
[ -n "$all_bins" ] || { say "no workspace package has a bin and a cuda feature"; exit 1; }

specs=("$@")
if [ ${#specs[@]} = 0 ]; then
    mapfile -t specs < <(cut -d' ' -f1 <<<"$all_bins" | sort -u)
fi

# Resolve the specs to cargo arguments (one cargo call per spec) and the list of binaries.
cargo_calls=()
bins=()
for spec in "${specs[@]}"; do
    pkg=${spec%%:*}
    grep -q "^$pkg " <<<"$all_bins" || { say "$pkg: not a workspace package with a bin and a cuda feature"; exit 1; }
    if [[ $spec == *:* ]]; then
        args="-p $pkg"
        IFS=, read -ra want <<<"${spec#*:}"
        for b in "${want[@]}"; do
            grep -qx "$pkg $b" <<<"$all_bins" || { say "$pkg has no binary $b"; exit 1; }
            args+=" --bin $b"
            bins+=("$b")
        done
    else
        args="-p $pkg --bins"
        mapfile -t -O ${#bins[@]} bins < <(awk -v p="$pkg" '$1 == p { print $2 }' <<<"$all_bins")
    fi
    cargo_calls+=("$args")
done

build() {
    local log=$1 args
    for args in "${cargo_calls[@]}"; do
        # shellcheck disable=SC2086
        cargo build --release --features cuda $args 2>&1 | tee -a "$log" >&2 || return 1
    done
}

# The CUDA functions (by stub SONAME) among the linker's undefined symbols (GNU ld and lld wording;
# lld stops at 20 errors) and, for the rest, among the undefined symbols of every rlib/archive in the
# target dir (a superset of what the link needs; the unused stubs cost nothing).
undefined_cuda() {
    {
        grep -oE "undefined (reference to \`|symbol: )[A-Za-z0-9_]+" "$log" | sed -E 's/.*[` ]//'
        for f in "$CARGO_TARGET_DIR"/release/deps/*.rlib "$CARGO_TARGET_DIR"/release/build/*/out/*.a; do
            [ -f "$f" ] && { nm -u --format=posix "$f" 2>/dev/null || true; } | cut -d' ' -f1
        done
    } | sort -u | awk '/^cublasLt/ { print "libcublasLt.so.13", $0; next }
                       /^cublas/   { print "libcublas.so.13", $0; next }
                       /^curand/   { print "libcurand.so.10", $0; next }
                       /^nvrtc/    { print "libnvrtc.so.13", $0; next }
                       /^cu[A-Z]/  { print "libcuda.so.1", $0; next }' |
        grep -vxF -f <(grep -v '^#' scripts/cuda-stubs.txt) || true
}

say "CUDA_HOME=$CUDA_HOME CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR=$CARGO_TARGET_DIR RUSTFLAGS=\"$RUSTFLAGS\""
log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$(date +%s)
if ! build "$log"; then
    # Undefined references to CUDA library functions: add them to the stub list and relink once.
    new=$(undefined_cuda)
    [ -n "$new" ] || { say "build failed (not on CUDA stubs): see above"; exit 1; }
    say "adding $(wc -l <<<"$new") undefined CUDA functions to scripts/cuda-stubs.txt and relinking"
    printf '%s\n' "$new" >>scripts/cuda-stubs.txt
    eval "$(bash scripts/cuda-toolchain.sh)"
    : >"$log"
    build "$log" || { say "build failed after adding stubs: see above"; exit 1; }
fi
say "built in $(($(date +%s) - start)) s"

# Package: the binaries, what they need at run time, how they were built.
dist=$repo/dist/cuda
rm -rf "$dist"
mkdir -p "$dist/bin"
for b in "${bins[@]}"; do
    cp "$CARGO_TARGET_DIR/release/$b" "$dist/bin/"
done
{
    echo "# NEEDED shared libraries (readelf -d) of each binary. At run time: libcuda.so.1 from the"
    echo "# NVIDIA driver (>= 580 for CUDA 13.0); libcublas/libcublasLt/libcurand/libcudart/libnvrtc"
    echo "# 13.x e.g. from PyTorch's pip packages: site-packages/nvidia/cu13/lib on LD_LIBRARY_PATH."
    for b in "${bins[@]}"; do
        echo "$b: $(readelf -d "$dist/bin/$b" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
    done
} >"$dist/NEEDED.txt"
{
    echo "git: $(git rev-parse HEAD)$(git diff --quiet HEAD -- crates Cargo.toml Cargo.lock || echo ' (dirty)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m)"
    echo "cuda toolkit: $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p') (PyPI wheels, scripts/cuda-toolchain.sh)"
    echo "CUDA_COMPUTE_CAP: $CUDA_COMPUTE_CAP"
    echo "RUSTFLAGS: $RUSTFLAGS"
    echo "rustc: $(rustc --version)"
} >"$dist/BUILD-INFO"
tar -C "$repo/dist" -czf "$repo/dist/cream-cuda.tar.gz" cuda
mv "$repo/dist/cream-cuda.tar.gz" "$dist/"
cat "$dist/NEEDED.txt" >&2
say "binaries in $dist/bin ($(du -sh "$dist/bin" | cut -f1)); carry $dist/cream-cuda.tar.gz ($(du -h "$dist/cream-cuda.tar.gz" | cut -f1))"
