#!/usr/bin/env bash
# Requests per CPU second, side by side, over HTTP/1.1 (wrk) or h2c (h2load), with two splitgate
# builds in the same run. The method is ../shared/peers/peer-cpu.sh's: the proxy under test runs on
# CPU 0 inside a cgroup capped at QUOTA percent of one core, so that it, not the load generator or the
# upstreams on CPU 1, is the bottleneck; the proxies take turns (the order rotates each round); its
# user and system CPU come from /proc. The summary is each proxy's median ratio to HAProxy.
#
# usage: benches/peers/cpu.sh [-p h1|h2] [-r ROUNDS] [-d SECONDS] [-q QUOTA] [names...]
#   -p h1: wrk -c64 (default);  -p h2: h2load -c8 -m16, prior knowledge (h2c); nginx is left out
#   names: haproxy nginx splitgate base    (default: haproxy splitgate base, and nginx for h1)
#   splitgate runs $SPLITGATE_BIN (default target/release/splitgate); base runs $BASE_BIN, if set
# needs: root (cgroups), wrk, h2load, nginx, haproxy.  Debian: apt-get install wrk nghttp2-client nginx-light haproxy
set -u
peers=${PEERS_DIR:-/work/shared/peers}
proto=h1 rounds=3 secs=8 quota=50
while getopts "p:r:d:q:" o; do case $o in p) proto=$OPTARG;; r) rounds=$OPTARG;; d) secs=$OPTARG;; q) quota=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
default="haproxy splitgate"; [ -n "${BASE_BIN:-}" ] && default="$default base"; [ "$proto" = h1 ] && default="$default nginx"
names=(${*:-$default})
bin=$(realpath "${SPLITGATE_BIN:-target/release/splitgate}")
base=${BASE_BIN:+$(realpath "$BASE_BIN")}
for t in wrk h2load nginx haproxy taskset curl; do command -v $t >/dev/null || { echo "missing $t"; exit 2; }; done
hz=$(getconf CLK_TCK)
tmp=$(mktemp -d /tmp/cpu.XXXXXX)
pids=()
cg=""
if [ -d /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/cpu ]; then            # cgroup v1
  cg=/sys/fs/cgroup/cpu/cpu-sh-$$; mkdir -p $cg
  echo 100000 > $cg/cpu.cfs_period_us; echo $((quota * 1000)) > $cg/cpu.cfs_quota_us
elif [ -f /sys/fs/cgroup/cgroup.controllers ]; then                       # cgroup v2
  cg=/sys/fs/cgroup/cpu-sh-$$; mkdir -p $cg && echo "$((quota * 1000)) 100000" > $cg/cpu.max || cg=""
fi
[ -n "$cg" ] || echo "warning: no writable cgroup; running without a CPU quota (the load generator may be the limit)"
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; [ -n "$cg" ] && rmdir "$cg" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
sed "s#/tmp/lab-upstreams#$tmp/upstreams#g" "$peers/nginx-upstreams.conf" > "$tmp/upstreams.conf"
pkill -x nginx 2>/dev/null; sleep 0.5
taskset -c 1 nginx -c "$tmp/upstreams.conf" & pids+=($!)
sed "s#^\(\s*\)error_log .*#\1error_log $tmp/proxy-error.log;#; s#^\(\s*\)pid .*#\1pid $tmp/proxy.pid;#" "$peers/nginx-proxy.conf" > "$tmp/nginx-proxy.conf"
sleep 0.5
tree() { ps -e -o pid=,ppid= | awk -v root="$1" '{ parent[$1] = $2 } END { keep[root]=1; print root; do { g=0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p]=1; print p; g=1 } } while (g) }'; }
ticks() { local p; for p in "$@"; do cat /proc/$p/stat 2>/dev/null; done | awk '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { print u+0, s+0 }'; }
start() {
  pid=""
  case $1 in
    splitgate) port=18080; taskset -c 0 "$bin" run -c "$peers/splitgate.yaml" --log-level warn > "$tmp/sg.log" 2>&1 & pid=$! ;;
    base)      port=18080; taskset -c 0 "$base" run -c "$peers/splitgate.yaml" --log-level warn > "$tmp/base.log" 2>&1 & pid=$! ;;
    haproxy)   port=18082; taskset -c 0 haproxy -f "$peers/haproxy.cfg" -db > "$tmp/haproxy.log" 2>&1 & pid=$! ;;
    nginx)     port=18081; taskset -c 0 nginx -c "$tmp/nginx-proxy.conf" > "$tmp/nginx.log" 2>&1 & pid=$! ;;
    *) echo "unknown proxy $1"; exit 2 ;;
  esac
  for _ in $(seq 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break; sleep 0.1; done
  if [ -n "$cg" ]; then for p in $(tree $pid); do echo $p > $cg/cgroup.procs; done; fi
}
stop() { local t; t=$(tree $pid); kill $pid 2>/dev/null; for _ in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; for p in $t; do kill -9 $p 2>/dev/null; done; wait $pid 2>/dev/null; }
load() { # seconds -> requests done
  if [ "$proto" = h2 ]; then
    taskset -c 1 h2load -c 8 -m 16 -D "$1" "http://127.0.0.1:$port/" 2>&1 | awk '/^requests:/ {print $8}'
  else
    taskset -c 1 wrk -t1 -c64 -d"$1s" "http://127.0.0.1:$port/" 2>&1 | awk '/requests in/ {print $1}'
  fi
}
printf "%-5s %-9s %8s %8s %8s %8s %10s\n" round proxy rps user_us sys_us cpu_us req/cpu_s
n=${#names[@]}
for r in $(seq "$rounds"); do
  for k in $(seq 0 $((n - 1))); do
    name=${names[$(( (k + r - 1) % n ))]}
    start "$name"
    load 2 >/dev/null
    mapfile -t ps < <(tree $pid)
    read -r u0 s0 < <(ticks "${ps[@]}")
    req=$(load "$secs")
    read -r u1 s1 < <(ticks "${ps[@]}")
    stop
    echo "$r $name ${req:-0} $secs $((u1 - u0)) $((s1 - s0)) $hz" | awk '{
      if ($3 == 0 || $5 + $6 == 0) { printf "%-5s %-9s failed\n", $1, $2; next }
      u = 1e6 * $5 / $7 / $3; s = 1e6 * $6 / $7 / $3
      printf "%-5s %-9s %8.0f %8.2f %8.2f %8.2f %10.0f\n", $1, $2, $3 / $4, u, s, u + s, 1e6 / (u + s) }'
  done
done | tee "$tmp/runs.txt"
echo
echo "median over $rounds rounds ($proto, quota ${quota}% of CPU 0, ${secs}s runs):"
awk 'function sort(v, n,   i, j, t) { for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t } }
  $7 ~ /^[0-9]/ { rps[$2, $1] = $3; eff[$2, $1] = $7; seen[$2] = 1; rounds[$1] = 1 }
  END {
    for (p in seen) {
      n = 0
      for (r in rounds) if (((p, r) in rps) && (("haproxy", r) in rps)) { n++; a[n] = rps[p, r] / rps["haproxy", r]; b[n] = eff[p, r] / eff["haproxy", r] }
      if (!n) continue
      sort(a, n); sort(b, n); m = int((n + 1) / 2)
      printf "%-9s rps/haproxy %.2f [%.2f-%.2f]   req-per-cpu-s/haproxy %.2f [%.2f-%.2f]\n", p, a[m], a[1], a[n], b[m], b[1], b[n]
      delete a; delete b
    }
  }' "$tmp/runs.txt" | sort
