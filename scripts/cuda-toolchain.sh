#!/usr/bin/env bash
# The CUDA 13.0 build toolchain for the `cuda` feature, on a machine with no GPU and no CUDA toolkit.
#
#   eval "$(bash scripts/cuda-toolchain.sh)"     # or: source scripts/cuda-toolchain.sh
#
# Idempotent. It
#   1. downloads five pinned NVIDIA wheels from PyPI with pip (sha256-checked; ~104 MB, cached in
#      $CREAM_CUDA_WHEELS, default ~/.cache/cream/cuda-13.0-wheels),
#   2. unpacks their nvidia/cu13 trees into one prefix, $CREAM_CUDA_PREFIX (default
#      ~/.cache/cream/cuda-13.0): nvcc, cicc/libnvvm, ptxas, fatbinary, the runtime, CCCL headers,
#   3. writes link-time stub libraries into $CREAM_CUDA_PREFIX/lib/stubs, with the SONAMEs of the
#      real libraries (libcuda.so.1, libcublas.so.13, libcublasLt.so.13, libcurand.so.10,
#      libnvrtc.so.13) and the functions listed in scripts/cuda-stubs.txt. They only satisfy the
#      linker: the binary records the SONAMEs and gets the real libraries at run time. The stubs
#      must never be on LD_LIBRARY_PATH.
#   4. prints `export` lines (or, when sourced, sets them) for CUDA_HOME, PATH, CUDA_COMPUTE_CAP, CUDARC_CUDA_VERSION.
#
# 13.0 on purpose: the GPU machines' driver (580) cannot JIT PTX from a newer toolkit.
# CUDA_COMPUTE_CAP defaults to 90 (H100/H200); set it before running to target another GPU.
# Needs: python3 with pip, gcc (the host compiler nvcc uses, and for the stubs), sha256sum.

_cream_cuda_main() {
    set -euo pipefail
    local here repo prefix wheels cap
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
    repo=$(dirname "$here")
    prefix=${CREAM_CUDA_PREFIX:-$HOME/.cache/cream/cuda-13.0}
    wheels=${CREAM_CUDA_WHEELS:-$HOME/.cache/cream/cuda-13.0-wheels}
    cap=${CUDA_COMPUTE_CAP:-90}
    local stubs_list=$repo/scripts/cuda-stubs.txt

    # name==version  wheel file  sha256 (of the wheel as served by PyPI)
    local pins="\
nvidia-cuda-nvcc==13.0.88 nvidia_cuda_nvcc-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 nvidia_nvvm-13.0.88-py3-none-manylinux2010_x86_64.manylinux_2_12_x86_64.whl c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 nvidia_cuda_cccl-13.0.85-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
    # The libraries cudarc links (dynamic-linking) that the wheels above do not ship.
    local sonames="libcuda.so.1 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13"

    say() { echo "cuda-toolchain: $*" >&2; }
    for tool in python3 gcc sha256sum; do
        command -v "$tool" >/dev/null || { say "needs $tool"; return 1; }
    done

    # 1. wheels
    mkdir -p "$wheels"
    local req="" line spec file sum missing=0
    while read -r spec file sum; do
        if [ -f "$wheels/$file" ] && echo "$sum  $wheels/$file" | sha256sum -c --status; then
            continue
        fi
        missing=1
        req+="$spec --hash=sha256:$sum"$'\n'
    done <<<"$pins"
    if [ "$missing" = 1 ]; then
        say "downloading the CUDA 13.0 wheels into $wheels"
        local reqfile
        reqfile=$(mktemp)
        printf '%s' "$req" >"$reqfile"
        # The wheels are py3-none-manylinux; nvvm is tagged manylinux_2_12, the rest 2_17.
        python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
            --platform manylinux_2_17_x86_64 --platform manylinux_2_12_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux2010_x86_64 \
            -d "$wheels" -r "$reqfile" >&2
        rm -f "$reqfile"
    fi
    while read -r spec file sum; do
        echo "$sum  $wheels/$file" | sha256sum -c --status ||
            { say "sha256 mismatch for $wheels/$file"; return 1; }
    done <<<"$pins"

    # 2. the prefix (redone only when the pins change)
    local pins_hash
    pins_hash=$(printf '%s' "$pins" | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$prefix/.cream-pins" 2>/dev/null)" != "$pins_hash" ] || [ ! -x "$prefix/bin/nvcc" ]; then
        say "unpacking into $prefix"
        rm -rf "$prefix"
        local stage="$prefix.tmp.$$"
        rm -rf "$stage"
        mkdir -p "$stage"
        while read -r spec file sum; do
            # unzip keeping the unix permissions stored in the wheel (nvcc, cicc, ptxas are executables)
            python3 - "$wheels/$file" "$stage/unzip" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for info in z.infolist():
        path = z.extract(info, sys.argv[2])
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode)
PY
        done <<<"$pins"
        mv "$stage/unzip/nvidia/cu13" "$stage/cu13"
        rm -rf "$stage/unzip"
        # cudart ships only as libcudart.so.13; candle-kernels links -lcudart.
        ln -sfn libcudart.so.13 "$stage/cu13/lib/libcudart.so"
        echo "$pins_hash" >"$stage/cu13/.cream-pins"
        mv "$stage/cu13" "$prefix"
        rm -rf "$stage"
    fi

    # 3. the stubs (redone when scripts/cuda-stubs.txt changes)
    local stubs_hash
    stubs_hash=$( { echo "$sonames"; cat "$stubs_list"; } | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$prefix/lib/stubs/.cream-stubs" 2>/dev/null)" != "$stubs_hash" ]; then
        say "writing link-time stubs into $prefix/lib/stubs"
        rm -rf "$prefix/lib/stubs"
        mkdir -p "$prefix/lib/stubs"
        local so c
        for so in $sonames; do
            c="$prefix/lib/stubs/${so%%.so*}.c"
            {
                echo "/* Generated by scripts/cuda-toolchain.sh from scripts/cuda-stubs.txt: link-time stub"
                echo "   for $so. Never load it: the real library comes with the driver / CUDA. */"
                awk -v so="$so" '!/^#/ && NF == 2 && $1 == so { print "void " $2 "(void) {}" }' "$stubs_list" | sort -u
            } >"$c"
            gcc -shared -fPIC -O0 -Wl,-soname,"$so" -o "$prefix/lib/stubs/${so%%.so*}.so" "$c"
        done
        echo "$stubs_hash" >"$prefix/lib/stubs/.cream-stubs"
    fi

    # 4. the environment
    local path_new="$prefix/bin:$PATH"
    case ":$PATH:" in *":$prefix/bin:"*) path_new=$PATH ;; esac
    printf 'export CUDA_HOME=%q\n' "$prefix"
    printf 'export PATH=%q\n' "$path_new"
    printf 'export CUDA_COMPUTE_CAP=%q\n' "$cap"
    printf 'export CUDARC_CUDA_VERSION=13000\n'
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    # sourced: run in a child bash (so `set -e` stays there) and take its exports
    _cream_cuda_env=$(CREAM_CUDA_PREFIX="${CREAM_CUDA_PREFIX:-}" CREAM_CUDA_WHEELS="${CREAM_CUDA_WHEELS:-}" \
        CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-}" bash "${BASH_SOURCE[0]}") && eval "$_cream_cuda_env"
    _cream_cuda_rc=$?
    unset _cream_cuda_env
    unset -f _cream_cuda_main
    return $_cream_cuda_rc
fi
_cream_cuda_main
