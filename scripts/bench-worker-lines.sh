#!/usr/bin/env bash
# Our worker's log streaming rate, end to end on the embedded defaults: real builds (local
# worker, buildah) whose RUN step prints N lines, each against the same build printing
# none. The building phase's length (its two phase entries' times) is measured for both;
# N / (with - without) is the rate of the lines alone. Every run also checks that each line
# was stored once, in order. Prints one line per pair, then the medians.
#
#   scripts/bench-worker-lines.sh [LINES] [PAIRS]     # default 100000 lines, 3 pairs
#
# Uses target/release/buildman (BUILDMAN=path for another); needs buildah and
# busybox-static, as scripts/demo.sh does.
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-100000}
pairs=${2:-3}
bin=${BUILDMAN:-target/release/buildman}
[ -x "$bin" ] || cargo build --release --quiet -p buildman

work=$(mktemp -d /tmp/buildman-lines.XXXXXX)
data=$work/data
source scripts/serve.sh
start_serve "$bin" "$data" "$work"

# One build printing $1 lines; prints the building phase's seconds after checking the lines.
build() {
  local count=$1 run=$2
  local ctx=$work/ctx-$count-$run
  mkdir -p "$ctx"
  cp "$(command -v busybox)" "$ctx/busybox"
  # The label makes every run's RUN step new to buildah's layer cache.
  printf '%s\n' 'FROM scratch' 'COPY busybox /bin/busybox' "LABEL run=$run-$count" \
    "RUN [\"/bin/busybox\", \"seq\", \"1\", \"$count\"]" >"$ctx/Dockerfile"
  "$bin" submit "$ctx" -r "bench/lines-$count" --server "$api" --data-dir "$data" --json \
    >"$work/out-$count-$run.jsonl"
  python3 - "$work/out-$count-$run.jsonl" "$count" <<'EOF'
import json, sys
from datetime import datetime
path, count = sys.argv[1], int(sys.argv[2])
entries = [json.loads(l) for l in open(path) if l.strip()]
view = entries.pop()
assert view.get("phase") == "complete", f"the build ended {view.get('phase')}: {path}"
at = {e["message"]: datetime.fromisoformat(e["data"]["datetime"])
      for e in entries if e.get("type") == "phase"}
printed = [e["message"] for e in entries
           if e.get("type") != "phase" and e.get("message", "").rstrip("\n").isdigit()]
want = [f"{i}\n" for i in range(1, count + 1)]
assert printed == want, f"{len(printed)} numbered lines stored for {count}, or out of order: {path}"
print(f"{(at['pushing'] - at['building']).total_seconds():.3f}")
EOF
}

with=()
without=()
for run in $(seq "$pairs"); do
  a=$(build 0 "$run")
  b=$(build "$lines" "$run")
  without+=("$a")
  with+=("$b")
  echo "pair $run: building took ${a} s printing nothing, ${b} s printing $lines lines" \
    "($(python3 -c "print(round($lines / ($b - $a)))") lines/s of streaming)"
done
python3 - "$lines" "${without[*]}" "${with[*]}" <<'EOF'
import statistics, sys
lines = int(sys.argv[1])
a = statistics.median(map(float, sys.argv[2].split()))
b = statistics.median(map(float, sys.argv[3].split()))
print(f"medians: {a:.3f} s without, {b:.3f} s with {lines} lines: "
      f"{lines / (b - a):,.0f} lines/s of streaming, {lines / b:,.0f} lines/s over the whole phase")
EOF
