#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS_PER_TARGET (default 120), one at a time on one
# core, and prints per target: executions, exec/s and crashes (panics, hangs, OOMs) found.
# Exits 1 if any target crashed (the inputs are in fuzz/artifacts/<target>/).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]
#   FUZZ_TARGETS="netconf manifest" bash scripts/fuzz.sh 60     # only these
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz if
# missing. Not part of the test command. New inputs go to fuzz/target/corpus-run/<target>
# (the committed seeds in fuzz/corpus/<target> are only read); to fold the interesting ones
# into the seeds: cargo +nightly fuzz cmin <target> (after copying them in).
set -euo pipefail

secs=${1:-120}
case $secs in '' | *[!0-9]*)
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
    ;;
esac
cd "$(dirname "$0")/.."

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs the nightly toolchain: rustup toolchain install nightly" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# One build for every target (release, debug assertions and overflow checks on, ASan).
cargo +nightly fuzz build

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
logs=fuzz/target/fuzz-logs
mkdir -p "$logs"
declare -A execs rate crashes
total_execs=0
total_crashes=0
for t in $targets; do
    run_corpus=fuzz/target/corpus-run/$t
    artifacts=fuzz/artifacts/$t
    mkdir -p "$run_corpus" "$artifacts" "fuzz/corpus/$t"
    before=$(find "$artifacts" -type f | wc -l)
    echo "== $t: ${secs}s" >&2
    # -fork=1 (one child at a time) with -ignore_*: a crash is saved and counted, and
    # fuzzing goes on until the time is up. -timeout catches hangs, -rss_limit_mb runaway
    # memory.
    cargo +nightly fuzz run "$t" "$run_corpus" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
        >"$logs/$t.log" 2>&1 || true
    # Fork mode's status lines: "#EXECS: cov: .. oom/timeout/crash: a/b/c time: Ns ..".
    last=$(grep -E '^#[0-9]+: ' "$logs/$t.log" | tail -n 1 || true)
    n=$(sed -nE 's/^#([0-9]+): .*/\1/p' <<<"$last")
    # Fork mode's exec/s is the last job's: the average is executions over the time run.
    elapsed=$(sed -nE 's/.* time: ([0-9]+)s.*/\1/p' <<<"$last")
    r=$((${n:-0} / (${elapsed:-0} > 0 ? ${elapsed:-1} : 1)))
    after=$(find "$artifacts" -type f | wc -l)
    execs[$t]=${n:-0}
    rate[$t]=${r:-0}
    crashes[$t]=$((after - before))
    if [ -z "$n" ]; then
        echo "fuzz.sh: $t printed no statistics; see $logs/$t.log" >&2
        crashes[$t]=$((crashes[$t] + 1))
    fi
    total_execs=$((total_execs + execs[$t]))
    total_crashes=$((total_crashes + crashes[$t]))
done

printf '\n%-16s %8s %14s %10s %8s\n' target seconds executions exec/s crashes
for t in $targets; do
    printf '%-16s %8s %14s %10s %8s\n' "$t" "$secs" "${execs[$t]}" "${rate[$t]}" "${crashes[$t]}"
done
printf '%-16s %8s %14s %10s %8s\n' total "" "$total_execs" "" "$total_crashes"
if [ "$total_crashes" -gt 0 ]; then
    echo "fuzz.sh: crashes found: inputs in fuzz/artifacts/<target>/, logs in $logs" >&2
    exit 1
fi
