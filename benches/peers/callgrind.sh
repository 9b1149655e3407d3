#!/usr/bin/env bash
# callgrind.sh: instructions per proxied request, the noise-free measure (BENCHMARKS.md).
#
# Usage: benches/peers/callgrind.sh BINARY CONFIG TAG [extra h2load arguments, e.g. -H "x-user: 1"]
#
# The gateway (BINARY run --config CONFIG --concurrency 1) runs under valgrind's callgrind on
# CPU 0, with counting off; h2load on CPU 1 sends 4,000 HTTP/1.1 requests of warm-up over 4
# connections, counting is switched on, and 20,000 more are sent. The count is divided by
# 20,000. CONFIG must listen on 127.0.0.1:18080 and forward to the nginx upstreams of
# ../shared/peers/nginx-upstreams.conf (127.0.0.1:19001 and :19002), which must be running:
#   taskset -c 1 nginx -c "$PWD/../shared/peers/nginx-upstreams.conf" -p /tmp &
# Needs valgrind, nghttp2-client (h2load) and nginx-light. Output lands in /tmp/cg-TAG/.
set -euo pipefail
[ $# -ge 3 ] || { sed -n 4p "$0"; exit 2; }
BIN=$1; CFG=$2; TAG=$3; shift 3
OUT=/tmp/cg-$TAG
rm -rf "$OUT"; mkdir -p "$OUT"
pgrep -x nginx >/dev/null || { echo "start the nginx upstreams first (see the header)"; exit 1; }
taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/cg.out" \
  "$BIN" run --config "$CFG" --concurrency 1 >"$OUT/gw.log" 2>&1 &
VPID=$!
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.5; done
taskset -c 1 h2load -n 4000 -c 4 --h1 "$@" http://127.0.0.1:18080/ >/dev/null
callgrind_control -i on "$VPID" >/dev/null
taskset -c 1 h2load -n 20000 -c 4 --h1 "$@" http://127.0.0.1:18080/ >"$OUT/h2load.txt"
callgrind_control -d "$VPID" >/dev/null 2>&1
kill "$VPID"; wait "$VPID" 2>/dev/null || true
grep "succeeded" "$OUT/h2load.txt"
# The dump taken right after the run (cg.out.1) holds the counted requests; cg.out the exit.
total=$(callgrind_annotate "$OUT/cg.out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !n++ {gsub(",", "", $1); print $1}')
echo "$TAG: $total instructions, $((total / 20000)) per request"
