#!/bin/sh
# Start `vllm serve ARGS...`, wait until it answers /health (it has compiled and
# loaded), then stop it cleanly: the warm-up deploy/Dockerfile.vllm captures with
# `ccache-cli run --capture`. Exits 0 once the server was ready.
# Usage: deploy/vllm-warmup.sh MODEL [vllm serve options...]   (port: $VLLM_PORT, default 8000)
set -eu
port=${VLLM_PORT:-8000}
vllm serve "$@" --port "$port" &
server=$!
trap 'kill -INT $server 2>/dev/null || true' EXIT
until python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://127.0.0.1:$port/health" 2>/dev/null; do
  kill -0 $server 2>/dev/null || { echo "vllm serve exited before it was ready" >&2; exit 1; }
  sleep 2
done
kill -INT $server
wait $server || true
trap - EXIT
