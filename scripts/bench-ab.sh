#!/usr/bin/env bash
# Compare crew with itself: two revisions of crew-bench, run alternately in one invocation.
#
# Builds crates/crew-bench in release mode at revision A and at revision B (each in a
# temporary git worktree with its own target dir), then runs A, B, A, B, ... for ROUNDS
# rounds of every (backend, workload) pair, so both see the same machine at nearly the
# same time. Prints one markdown row per round and metric with the B/A ratio; a
# change is "within noise" when the ratios of the rounds straddle 1.
#
# stdout: the table. stderr: build logs and progress.
# files:  $BENCH_RESULTS_DIR/ab-<UTC time>.jsonl (every JSON line, tagged with its side)
#
# Usage: scripts/bench-ab.sh REV_A REV_B
# Environment (all optional):
#   ROUNDS          rounds per pair (default 3)
#   WORKLOADS       crew-bench workloads (default "overhead latency")
#   CREW_BACKENDS   backends (default "threads processes")
#   BENCH_RESULTS_DIR  where raw results go (default: <repo root>/bench-results)
#   BIN_A, BIN_B    crew-bench binaries already built at REV_A and REV_B (skips that build)
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
BIN_A="${BIN_A:-$(build a "$1")}"
BIN_B="${BIN_B:-$(build b "$2")}"

mkdir -p "$RESULTS_DIR"
raw="$RESULTS_DIR/ab-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
printf '# {"a":"%s","b":"%s","rounds":%s}\n' \
  "$(git -C "$ROOT" rev-parse --short "$1")" "$(git -C "$ROOT" rev-parse --short "$2")" "$ROUNDS" >"$raw"
for round in $(seq 1 "$ROUNDS"); do
  for backend in $CREW_BACKENDS; do
    for w in $WORKLOADS; do
      for side in a b; do
        bin=$BIN_A; [[ $side == b ]] && bin=$BIN_B
        log "round $round: $side $backend $w"
        timeout --kill-after=10 300 "$bin" --backend "$backend" --workload "$w" </dev/null 2>/dev/null |
          grep '^{' | sed "s/^{/{\"side\":\"$side\",\"round\":$round,/" >>"$raw" || log "failed: $side $backend $w"
      done
    done
  done
done

python3 - "$raw" <<'EOF'
import json, sys
vals = {}
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    vals.setdefault((r["impl"], r["workload"], r["metric"], r["unit"], r["round"]), {})[r["side"]] = r["value"]
print("| impl | workload | metric | unit | round | A | B | B/A |")
print("|---|---|---|---|---:|---:|---:|---:|")
for (impl, w, m, u, rnd), v in sorted(vals.items()):
    a, b = v.get("a"), v.get("b")
    ratio = f"{b / a:.2f}" if a and b else ""
    print(f"| {impl} | {w} | {m} | {u} | {rnd} | {a if a is not None else ''} | {b if b is not None else ''} | {ratio} |")
print()
print("B/A: for tasks/s above 1 means B is faster; for us and ms below 1 means B is faster.")
EOF
log "raw results: $raw"
