#!/usr/bin/env bash
# Runs Backstop's whole test suite: Rust unit and end-to-end tests, then the
# Python tests that drive the server through the official SDK. Installs what
# the tests need first, so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian tools that tests call: disk images, and jq and curl for the README walkthrough.
missing=()
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v sfdisk >/dev/null || missing+=(fdisk)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

# The official SDK and pytest, for the wire-compatibility and SDK tests.
python3 -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

# Release builds: the README walkthrough, which a test runs as written, builds
# the release binary, so building everything in release compiles it once.
cargo build --release --workspace --all-targets
cargo test --release --workspace
BACKSTOP_BIN="$PWD/target/release/backstop" python3 -m pytest tests/python -q
