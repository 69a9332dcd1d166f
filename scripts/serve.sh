# Sourced by the scripts here: `start_serve BIN DATA LOGS` starts `BIN serve` on free
# loopback ports with its data in DATA and its output in LOGS/serve.out and LOGS/serve.log,
# stops it when the script exits, and sets `api` to its REST API's address.
start_serve() {
  local bin=$1 data=$2 logs=$3
  "$bin" serve --data-dir "$data" --http-listen 127.0.0.1:0 --grpc-listen 127.0.0.1:0 \
    >"$logs/serve.out" 2>"$logs/serve.log" &
  server=$!
  trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    grep -q "buildman serving" "$logs/serve.out" 2>/dev/null && break
    sleep 0.1
  done
  api=$(sed -n 's/^buildman serving: REST API on \([^,]*\),.*/\1/p' "$logs/serve.out")
  [ -n "$api" ] || { echo "error: the server did not start; see $logs/serve.log" >&2; exit 1; }
}
