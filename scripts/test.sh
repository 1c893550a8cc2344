#!/usr/bin/env bash
# Runs every check of the project: formatting, lints, unit and integration tests against real
# servers started privately by the tests. Installs what is missing first (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "test.sh: cargo is required (install Rust with rustup)" >&2
    exit 1
fi
# rustfmt and clippy are rustup components; add them when this toolchain lacks them.
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
    done
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --all-targets --locked
