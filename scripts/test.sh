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

# Servers the tests start privately (never the system's instances).
missing=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "test.sh: missing ${missing[*]}: install them, or run as root to have them installed" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test (embedded SQLite store)"
cargo test --all-targets --locked
echo "== cargo test (MariaDB store, private instance)"
CHAT_TEST_STORE=mysql cargo test --tests --locked
