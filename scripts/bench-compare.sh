#!/usr/bin/env bash
# Benchmark crew against the peers in one invocation and print one merged markdown table.
#
# Runs crates/crew-bench (one fresh process per backend and workload, as the contract in
# shared/bench/WORKLOADS.md asks), then shared/bench/run-peers.sh, back to back. shared/
# is read-only and run-peers.sh builds into its own directory (rust-peers/target,
# node/node_modules), so it runs from a fresh copy in a temp dir that is removed on exit.
#
# stdout: the merged table (markdown). stderr: build logs and progress.
# files:  $BENCH_RESULTS_DIR/compare-<UTC time>.jsonl  (raw JSON lines + '#' comments)
#         $BENCH_RESULTS_DIR/compare-<UTC time>.md     (the table)
# exit:   0 if every run succeeded, 1 otherwise (the table shows what did run).
#
# Environment (all optional):
#   WORKLOADS          subset of: overhead latency cpu payload spawn (crew and peers)
#   PEERS              regex over peer labels, passed to run-peers.sh (e.g. 'rust/')
#   PEER_TIMEOUT       seconds per (impl, workload) run, crew included (default 150)
#   SKIP_INSTALL, NODE, PYTHON, CARGO   passed to run-peers.sh
#   CREW_BACKENDS      crew backends to run: threads, processes (default: threads)
#   SHARED_BENCH       the harness to copy (default: <repo root>/../shared/bench)
#   BENCH_RESULTS_DIR  where raw results go (default: <repo root>/bench-results)
#
# Usage: WORKLOADS="overhead latency" PEERS='rust/' scripts/bench-compare.sh
set -euo pipefail

log() { printf '[bench-compare] %s\n' "$*" >&2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(git -C "$HERE" rev-parse --show-toplevel)"
SHARED_BENCH="${SHARED_BENCH:-$ROOT/../shared/bench}"
RESULTS_DIR="${BENCH_RESULTS_DIR:-$ROOT/bench-results}"
WORKLOADS="${WORKLOADS:-overhead latency cpu payload spawn}"
PEERS="${PEERS:-.}"
PEER_TIMEOUT="${PEER_TIMEOUT:-150}"
CREW_BACKENDS="${CREW_BACKENDS:-threads}"
CARGO="${CARGO:-cargo}"
PYTHON="${PYTHON:-python3}"
export WORKLOADS PEERS PEER_TIMEOUT

[[ -x "$SHARED_BENCH/run-peers.sh" ]] || { log "no run-peers.sh in $SHARED_BENCH (set SHARED_BENCH)"; exit 2; }
for w in $WORKLOADS; do
  case "$w" in
    overhead | latency | cpu | payload | spawn) ;;
    *) log "unknown workload: $w"; exit 2 ;;
  esac
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/crew-bench-compare.XXXXXX")"
# The copy keeps shared/'s read-only modes; make it writable so it can be built in and removed.
cleanup() { chmod -R u+w "$TMP" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ crew
# The workspace's normal target dir (or $CARGO_TARGET_DIR if set); cargo reports where
# the binary is, so no path is assumed.
log "crew: cargo build --release -p crew-bench"
CREW_BIN="$(cd "$ROOT" && "$CARGO" build --release -p crew-bench --message-format=json-render-diagnostics |
  "$PYTHON" -c '
import json, sys
exe = ""
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "crew-bench" and m.get("executable"):
        exe = m["executable"]
print(exe)')"
[[ -n "$CREW_BIN" ]] || { log "crew-bench build produced no binary"; exit 2; }

: >"$TMP/crew.jsonl"
crew_failures=()
for backend in $CREW_BACKENDS; do
  for w in $WORKLOADS; do
    label="rust/crew-$backend"
    log "$label $w ..."
    start=$SECONDS rc=0
    timeout --kill-after=10 "$PEER_TIMEOUT" "$CREW_BIN" --backend "$backend" --workload "$w" \
      </dev/null >"$TMP/out" || rc=$?
    grep '^{' "$TMP/out" >>"$TMP/crew.jsonl" || true
    case $rc in
      0) log "$label $w done in $((SECONDS - start))s" ;;
      3) log "$label: backend not built yet, skipped"; break ;;
      124 | 137) crew_failures+=("$label $w: timed out after ${PEER_TIMEOUT}s") ;;
      *) crew_failures+=("$label $w: exit $rc") ;;
    esac
  done
done

# ------------------------------------------------------------------ peers
log "peers: copying $SHARED_BENCH to $TMP/bench"
mkdir "$TMP/bench"
tar -C "$SHARED_BENCH" --exclude=target --exclude=node_modules -cf - . |
  tar -C "$TMP/bench" -xf -
chmod -R u+w "$TMP/bench"
peers_rc=0
"$TMP/bench/run-peers.sh" >"$TMP/peers.jsonl" || peers_rc=$?
[[ $peers_rc -le 1 ]] || log "run-peers.sh exited $peers_rc"

# ------------------------------------------------------------------ merge
mkdir -p "$RESULTS_DIR"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
raw="$RESULTS_DIR/compare-$stamp.jsonl"
crew_rev="$(git -C "$ROOT" rev-parse --short HEAD)"
git -C "$ROOT" diff --quiet HEAD -- crates || crew_rev="$crew_rev-dirty"
{
  grep '^# {' "$TMP/peers.jsonl" || true # run-peers' header (machine, versions, date)
  printf '# {"crew":"%s","backends":"%s","workloads":"%s","peers":"%s"}\n' \
    "$crew_rev" "$CREW_BACKENDS" "$WORKLOADS" "$PEERS"
  cat "$TMP/crew.jsonl"
  grep '^{' "$TMP/peers.jsonl" || true
  for f in ${crew_failures[@]+"${crew_failures[@]}"}; do printf '# FAILED %s\n' "$f"; done
  grep '^# FAILED' "$TMP/peers.jsonl" || true
} >"$raw"
[[ $peers_rc -eq 0 ]] || grep -q '^# FAILED' "$raw" || printf '# FAILED run-peers.sh: exit %s\n' "$peers_rc" >>"$raw"

"$PYTHON" - "$raw" <<'EOF' | tee "${raw%.jsonl}.md"
import json, re, sys

ORDER = ["overhead", "latency", "cpu", "payload", "spawn"]
# The bars, per crew backend: rows whose crew/peer ratios are shown, and the peers
# compared against (each backend against peers of its own kind).
BAR_ROWS = {
    "threads": {("overhead", "tasks_per_sec"), ("latency", "p50_us"),
                ("spawn", "startup_ms"), ("spawn", "shutdown_ms")},
    "processes": {("overhead", "tasks_per_sec"), ("latency", "p50_us"),
                  ("latency", "p99_us"), ("payload", "mb_per_sec"),
                  ("spawn", "startup_ms"), ("spawn", "shutdown_ms")},
}
BAR_PEERS = {
    "threads": [("rayon", "rust/rayon"), ("threadpool", "rust/threadpool"),
                ("tokio", "rust/tokio-spawn_blocking")],
    "processes": [("procspawn", "rust/procspawn"),
                  ("workerpool-process", "node/workerpool-process")],
}

rows, units, cols, notes, comments = {}, {}, [], {}, []
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("#"):
        comments.append(line)
        continue
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    # "rust/procspawn[window=512]" -> column "rust/procspawn", note "[window=512]".
    # crew's own bracketed variants ("rust/crew-threads[spawn_batch]") are a
    # different way of submitting, measured alongside: they keep their own column.
    m = re.match(r"^(.*?)(\[.*\])?$", r["impl"])
    col, note = m.group(1), m.group(2) or ""
    if col.startswith("rust/crew-") and note:
        col, note = r["impl"], ""
    if col not in cols:
        cols.append(col)
    key = (r["workload"], r["metric"])
    rows.setdefault(key, {})[col] = r["value"]
    units[key] = r["unit"]
    if note:
        notes[(key, col)] = note

crew = [c for c in cols if c.startswith("rust/crew-")]
peers = [c for c in cols if c not in crew]
cols = crew + peers

def num(v):
    if v is None:
        return ""
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"

# The bars are about crew's per-task path; batched variants are shown, not ratioed.
def backend(c):
    return c[len("rust/crew-"):]

ratio_cols = [(c, short, p) for c in crew if "[" not in c
              for short, p in BAR_PEERS.get(backend(c), [])]
head = ["workload", "metric", "unit"] + [c.split("/", 1)[1] for c in cols] + [
    (c.split("/", 1)[1] if len({c for c, _, _ in ratio_cols}) > 1 else "crew") + "/" + short
    for c, short, _ in ratio_cols]
print("| " + " | ".join(head) + " |")
print("|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|")
keys = sorted(rows, key=lambda k: (ORDER.index(k[0]) if k[0] in ORDER else 99,
                                   list(rows).index(k)))
for key in keys:
    vals = rows[key]
    cells = list(key) + [units[key]]
    for c in cols:
        cell = num(vals.get(c))
        if cell and (key, c) in notes:
            cell += " " + notes[(key, c)]
        cells.append(cell)
    for c, _, p in ratio_cols:
        ok = key in BAR_ROWS.get(backend(c), ()) and vals.get(c) and vals.get(p)
        cells.append(f"{vals[c] / vals[p]:.2f}" if ok else "")
    print("| " + " | ".join(cells) + " |")

print()
print("crew/peer ratios: for tasks/s higher is better (>1 = crew faster); "
      "for us and ms lower is better (<1 = crew faster). "
      "cpu efficiency: ideal 1.")
header = [c for c in comments if c.startswith("# {")]
if header:
    print()
    for h in header:
        print("`" + h[2:] + "`  ")
failed = [c for c in comments if c.startswith("# FAILED")]
if failed:
    print()
    print("Failed runs:")
    for f in failed:
        print("- " + f[len("# FAILED "):])
EOF

log "raw results: $raw"
if [[ ${#crew_failures[@]} -gt 0 || $peers_rc -ne 0 ]]; then
  exit 1
fi
