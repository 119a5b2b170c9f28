#!/usr/bin/env bash
# Bootstrap for the `just` command runner: if `just` is not on PATH, install it from PyPI
# (package rust-just, which ships the prebuilt binary) and say where it went.
set -euo pipefail
JUST_VERSION=1.59.0

# Where pip puts commands: the interpreter's (or venv's) scripts dir, or the user one (pip --user).
pip_bins() {
  python3 -c 'import os, sysconfig
print(sysconfig.get_path("scripts")); print(sysconfig.get_path("scripts", os.name + "_user"))'
}

# found: report a just binary that exists, and whether its directory is on PATH.
found() {
  echo "just: $1 ($("$1" --version))"
  case ":$PATH:" in *":$(dirname "$1"):"*) ;; *) echo "note: add it to PATH: export PATH=\"$(dirname "$1"):\$PATH\"" ;; esac
}

if just --version &>/dev/null; then found "$(command -v just)"; exit 0; fi
for d in $(pip_bins); do [[ -x $d/just ]] && { found "$d/just"; exit 0; }; done

echo "just not found; running: python3 -m pip install rust-just==$JUST_VERSION"
python3 -m pip install --quiet "rust-just==$JUST_VERSION" ||
  python3 -m pip install --quiet --user "rust-just==$JUST_VERSION"
for d in $(pip_bins); do [[ -x $d/just ]] && { found "$d/just"; exit 0; }; done
echo "error: pip installed rust-just but no just binary is in $(pip_bins | tr '\n' ' ')" >&2
exit 1
