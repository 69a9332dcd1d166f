#!/usr/bin/env bash
# The README's first command: a real build, end to end, on the embedded defaults.
# Builds buildman, starts `buildman serve` with a fresh data dir, submits examples/hello
# (built by the local worker with buildah), follows it to the end, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in buildah busybox; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (apt-get install buildah busybox-static)" >&2; exit 1; }
done
cp "$(command -v busybox)" examples/hello/busybox

cargo build --release --quiet
bin=target/release/buildman
data=$(mktemp -d /tmp/buildman-demo.XXXXXX)
source scripts/serve.sh
start_serve "$bin" "$data" "$data"

start=$(date +%s.%N)
status=0
"$bin" submit examples/hello -r demo/hello -t v1 --server "$api" --data-dir "$data" || status=$?
end=$(date +%s.%N)
echo "build finished with exit code $status in $(echo "$end - $start" | bc 2>/dev/null || echo '?') s"
echo "image written as an OCI layout under $data/images/demo/hello; manager log: $data/serve.log"
exit $status
