#!/usr/bin/env bash
# Fail on an unused dependency (`just check-deps`, run by `just test`):
# 1. cargo-machete (pinned; installed with `cargo install --locked` when missing or another
#    version) over every crate's [dependencies], [dev-dependencies] and [build-dependencies];
# 2. every entry of the workspace's [workspace.dependencies] must be used by some member
#    (`name.workspace = true` or `name = { workspace = true ... }`), which machete does not check.
# A dependency that is needed although no code names it (e.g. one added only to turn on a feature)
# goes into its crate's [package.metadata.cargo-machete] ignored list, with a comment saying why.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MACHETE_VERSION=0.9.2

if [[ $(cargo machete --version 2>/dev/null || true) != *"$MACHETE_VERSION"* ]]; then
    echo "check-deps: installing cargo-machete $MACHETE_VERSION" >&2
    cargo install --locked --quiet cargo-machete --version "$MACHETE_VERSION"
fi
cargo machete

members=$(sed -n 's/^members = \[\(.*\)\]/\1/p' Cargo.toml | tr -d '",' )
unused=()
for dep in $(sed -n '/^\[workspace.dependencies\]/,/^\[/{s/^\([A-Za-z0-9_-]*\) *=.*/\1/p}' Cargo.toml); do
    used=0
    for m in $members; do
        if grep -Eq "^${dep}(\.workspace *= *true| *= *\{[^}]*workspace *= *true)" "$m/Cargo.toml"; then used=1; break; fi
    done
    [[ $used = 1 ]] || unused+=("$dep")
done
if (( ${#unused[@]} )); then
    echo "check-deps: unused in Cargo.toml [workspace.dependencies] (no member uses them): ${unused[*]}; remove them" >&2
    exit 1
fi
echo "check-deps: no unused dependencies" >&2
