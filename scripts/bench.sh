#!/usr/bin/env bash
# Benchmarks Backstop against restic, borg and casync on one ext4 disk
# image and rewrites BENCHMARKS.md with the results. Installs the tools,
# builds the release binaries, then runs crates/backstop-bench.
#
# Run as root: the benchmark drops the page cache before every timed step.
# Extra arguments go to backstop-bench (see `--help`), for example
# `scripts/bench.sh --work-dir /mnt/scratch/bench --cache warm`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "run as root: the benchmark writes /proc/sys/vm/drop_caches and /proc/PID/clear_refs" >&2
    exit 1
fi

missing=()
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v restic >/dev/null || missing+=(restic)
command -v borg >/dev/null || missing+=(borgbackup)
command -v casync >/dev/null || missing+=(casync)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release -p backstop -p backstop-bench
release="${CARGO_TARGET_DIR:-target}/release"
exec "$release/backstop-bench" --backstop "$release/backstop" --command "scripts/bench.sh $*" "$@"
