#!/usr/bin/env bash
# Builds the release binaries and says where they are.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
dir="$(pwd)/target/release"
echo "built:"
for bin in chatserver chatclient chatbench; do
    [ -x "$dir/$bin" ] && echo "  $dir/$bin"
done
exit 0
