#!/usr/bin/env bash
# Compare crew with itself: two revisions of crew-bench (or one binary with two sets of
# flags), run alternately in one invocation.
#
# Builds crates/crew-bench in release mode at revision A and at revision B (each in a
# temporary git worktree with its own target dir; once if both name the same commit),
# then runs A, B, B, A, A, B, ... (the order flips every round, so neither side always
# runs second) for ROUNDS rounds of every (backend, workload) pair, so both see the
# same machine at nearly the same time. Prints one markdown row per round and metric
# with the B/A ratio; a change is "within noise" when the ratios of the rounds
# straddle 1.
#
# Flags for one side only (ARGS_A, ARGS_B) compare a setting rather than a revision:
#   ARGS_B=--exporter scripts/bench-ab.sh HEAD HEAD     # exporter off (A) vs on (B)
# crew-bench tags such runs' impl names (`[exporter]`); rows are paired with the tag
# removed.
#
# stdout: the table. stderr: build logs and progress.
# files:  $BENCH_RESULTS_DIR/ab-<UTC time>.jsonl (every JSON line, tagged with its side)
#         $BENCH_RESULTS_DIR/ab-<UTC time>.log   (crew-bench's stderr)
#
# Usage: scripts/bench-ab.sh REV_A REV_B
# Environment (all optional):
#   ROUNDS          rounds per pair (default 3)
#   WORKLOADS       crew-bench workloads (default "overhead latency")
#   CREW_BACKENDS   backends (default "threads processes")
#   BENCH_RESULTS_DIR  where raw results go (default: <repo root>/bench-results)
#   BIN_A, BIN_B    crew-bench binaries already built at REV_A and REV_B (skips that build)
#   ARGS_A, ARGS_B  extra crew-bench flags for side A / side B (default none)
#   MAX_LOAD        before each round, wait (up to LOAD_WAIT seconds, default 300) until
#                   the 1-minute load average is below this (default: no wait)
set -euo pipefail

log() { printf '[bench-ab] %s\n' "$*" >&2; }

[[ $# -eq 2 ]] || { echo "usage: $0 REV_A REV_B" >&2; exit 2; }
ROOT="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)"
ROUNDS="${ROUNDS:-3}"
WORKLOADS="${WORKLOADS:-overhead latency}"
CREW_BACKENDS="${CREW_BACKENDS:-threads processes}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$ROOT/bench-results}"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/crew-bench-ab.XXXXXX")"
cleanup() {
  for side in a b; do
    [[ -d "$TMP/$side" ]] && git -C "$ROOT" worktree remove --force "$TMP/$side" >/dev/null 2>&1 || true
  done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Builds crew-bench at $2 into $TMP/$1 and prints the binary's path.
build() {
  local side=$1 rev=$2
  git -C "$ROOT" worktree add --detach "$TMP/$side" "$rev" >/dev/null 2>&1
  log "building $side = $(git -C "$TMP/$side" rev-parse --short HEAD)"
  (cd "$TMP/$side" && cargo build --release -q -p crew-bench >&2)
  echo "$TMP/$side/target/release/crew-bench"
}
ARGS_A="${ARGS_A:-}"
ARGS_B="${ARGS_B:-}"
MAX_LOAD="${MAX_LOAD:-}"
LOAD_WAIT="${LOAD_WAIT:-300}"
BIN_A="${BIN_A:-$(build a "$1")}"
if [[ -z "${BIN_B:-}" && "$(git -C "$ROOT" rev-parse "$1^{commit}")" == "$(git -C "$ROOT" rev-parse "$2^{commit}")" ]]; then
  BIN_B=$BIN_A
fi
BIN_B="${BIN_B:-$(build b "$2")}"

load1() { cut -d' ' -f1 /proc/loadavg; }
# Waits, bounded by LOAD_WAIT seconds, for the load average to drop below MAX_LOAD.
calm() {
  [[ -n "$MAX_LOAD" ]] || return 0
  local waited=0
  while awk -v l="$(load1)" -v m="$MAX_LOAD" 'BEGIN { exit !(l >= m) }'; do
    if ((waited >= LOAD_WAIT)); then
      log "load $(load1) still >= $MAX_LOAD after ${waited}s; running anyway"
      return 0
    fi
    sleep 10
    waited=$((waited + 10))
  done
}

mkdir -p "$RESULTS_DIR"
raw="$RESULTS_DIR/ab-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
errlog="${raw%.jsonl}.log" # crew-bench's stderr (timings, the exporter's scrape counts)
printf '# {"a":"%s","b":"%s","args_a":"%s","args_b":"%s","rounds":%s}\n' \
  "$(git -C "$ROOT" rev-parse --short "$1")" "$(git -C "$ROOT" rev-parse --short "$2")" \
  "$ARGS_A" "$ARGS_B" "$ROUNDS" >"$raw"
for round in $(seq 1 "$ROUNDS"); do
  calm
  log "round $round (load $(load1))"
  order="a b"; ((round % 2 == 0)) && order="b a"
  for backend in $CREW_BACKENDS; do
    for w in $WORKLOADS; do
      for side in $order; do
        bin=$BIN_A args=$ARGS_A
        [[ $side == b ]] && bin=$BIN_B args=$ARGS_B
        log "round $round: $side $backend $w $args"
        # $args is split into flags on purpose.
        # shellcheck disable=SC2086
        timeout --kill-after=10 300 "$bin" --backend "$backend" --workload "$w" $args </dev/null 2>>"$errlog" |
          grep '^{' | sed "s/^{/{\"side\":\"$side\",\"round\":$round,/" >>"$raw" || log "failed: $side $backend $w"
      done
    done
  done
done

python3 - "$raw" <<'EOF'
import json, re, sys
vals = {}
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    # A side run with --exporter has its impl tagged; pair it with the untagged one.
    impl = re.sub(r"\[exporter[^\]]*\]", "", r["impl"])
    vals.setdefault((impl, r["workload"], r["metric"], r["unit"], r["round"]), {})[r["side"]] = r["value"]
print("| impl | workload | metric | unit | round | A | B | B/A |")
print("|---|---|---|---|---:|---:|---:|---:|")
for (impl, w, m, u, rnd), v in sorted(vals.items()):
    a, b = v.get("a"), v.get("b")
    ratio = f"{b / a:.2f}" if a and b else ""
    print(f"| {impl} | {w} | {m} | {u} | {rnd} | {a if a is not None else ''} | {b if b is not None else ''} | {ratio} |")
print()
print("B/A: for tasks/s above 1 means B is faster; for us and ms below 1 means B is faster.")
EOF
log "raw results: $raw (stderr: $errlog)"
