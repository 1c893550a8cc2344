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
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
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
echo "== the server alone: no client or load-generator code or dependency"
cargo clippy --no-default-features --lib --bin chatserver --locked -- -D warnings
leaked=$(cargo tree --no-default-features --locked -e normal --prefix none | grep -E '^(rustyline|rpassword|hdrhistogram|indicatif) ' || true)
if [ -n "$leaked" ]; then
    echo "test.sh: the server depends on client or bench crates:" >&2
    echo "$leaked" >&2
    exit 1
fi
echo "== cargo test (embedded SQLite store)"
cargo test --all-targets --locked
echo "== cargo test (MariaDB store, private instance)"
# The single-node suite again on MariaDB; the cluster tests always use MariaDB, so they ran above.
single_node=()
for t in tests/*.rs; do
    name=$(basename "$t" .rs)
    [ "$name" = cluster ] || single_node+=(--test "$name")
done
CHAT_TEST_STORE=mysql cargo test --locked "${single_node[@]}"
