#!/usr/bin/env bash
# Where a proxy's CPU goes per HTTP/1.1 request: the kernel's share and the user share, the main
# system calls, TCP segments and system-wide context switches, for HAProxy and splitgate builds
# in turn, the way BENCHMARKS.md ("Where HTTP/1.1's CPU goes") measured them.
#
# usage: benches/peers/kernel-share.sh [-q QUOTA] [-d SECONDS] haproxy|BINARY...
#   each argument is "haproxy" or a splitgate binary; the proxy runs on CPU 0 (capped at QUOTA%
#   of it with a cgroup when -q is given), the nginx upstreams and wrk -c64 on CPU 1.
# needs: root, perf, nstat (iproute2), wrk, nginx, haproxy.
set -u
peers=${PEERS_DIR:-/work/shared/peers}
quota="" secs=5
while getopts "q:d:" o; do case $o in q) quota=$OPTARG;; d) secs=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { sed -n 5,8p "$0"; exit 2; }
for t in perf nstat wrk nginx haproxy curl taskset; do command -v $t >/dev/null || { echo "missing $t"; exit 2; }; done
tmp=$(mktemp -d /tmp/kshare.XXXXXX)
cg=/sys/fs/cgroup/cpu/kshare-$$
cleanup() { pkill -P $$ 2>/dev/null; [ -d "$cg" ] && rmdir "$cg" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
sed "s#/tmp/lab-upstreams#$tmp/upstreams#g" "$peers/nginx-upstreams.conf" > "$tmp/upstreams.conf"
pkill -x nginx 2>/dev/null; sleep 0.5
taskset -c 1 nginx -c "$tmp/upstreams.conf" &
sleep 0.5
printf "%-28s %8s %8s %7s %7s %7s %7s %7s %6s %6s\n" proxy rps cpu_us kernel user sendto recvfr epoll segs ctxt
for who in "$@"; do
  if [ "$who" = haproxy ]; then
    port=18082; taskset -c 0 haproxy -f "$peers/haproxy.cfg" -db > "$tmp/proxy.log" 2>&1 & pid=$!
  else
    port=18080; taskset -c 0 "$who" run -c "$peers/splitgate.yaml" --log-level warn > "$tmp/proxy.log" 2>&1 & pid=$!
  fi
  for _ in $(seq 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port/" && break; sleep 0.1; done
  if [ -n "$quota" ]; then
    mkdir -p $cg; echo 100000 > $cg/cpu.cfs_period_us; echo $((quota * 1000)) > $cg/cpu.cfs_quota_us
    for t in /proc/$pid/task/*; do echo "${t##*/}" > $cg/tasks; done
  fi
  taskset -c 1 wrk -t1 -c64 -d2s "http://127.0.0.1:$port/" > /dev/null
  # One run: CPU time, segments and context switches; a second: the profile.
  nstat -n
  c0=$(awk '/^ctxt/ {print $2}' /proc/stat)
  taskset -c 1 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$port/" > "$tmp/wrk.txt" &
  w=$!
  perf stat -x, -e task-clock -p $pid -- sleep $((secs - 1)) 2> "$tmp/stat.txt"
  wait $w
  c1=$(awk '/^ctxt/ {print $2}' /proc/stat)
  segs=$(nstat | awk '$1 == "TcpOutSegs" {print $2}')
  req=$(awk '/requests in/ {print $1}' "$tmp/wrk.txt")
  rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.txt")
  ms=$(awk -F, '/task-clock/ {print $1}' "$tmp/stat.txt")
  taskset -c 1 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$port/" > /dev/null &
  w=$!
  perf record -F 4999 -g -o "$tmp/perf.data" -p $pid -- sleep $((secs - 1)) > /dev/null 2>&1
  wait $w
  kill $pid; wait $pid 2>/dev/null
  [ -d "$cg" ] && rmdir $cg
  perf report -i "$tmp/perf.data" --no-children --sort dso -g none 2>/dev/null > "$tmp/dso.txt"
  perf report -i "$tmp/perf.data" --children --sort sym -g none 2>/dev/null > "$tmp/sym.txt"
  kernel=$(awk '/\[kernel.kallsyms\]/ {gsub("%", "", $1); print $1; exit}' "$tmp/dso.txt")
  share() { awk -v s="$1" '$NF == s {gsub("%", "", $1); print $1; exit}' "$tmp/sym.txt"; }
  awk -v who="$(basename "$who")" -v rps="$rps" -v ms="$ms" -v secs=$((secs - 1)) -v k="${kernel:-0}" \
      -v snd="$(share __x64_sys_sendto)" -v rcv="$(share __x64_sys_recvfrom)" -v ep="$(share __x64_sys_epoll_wait)" \
      -v segs="${segs:-0}" -v req="${req:-1}" -v cs=$((c1 - c0)) 'BEGIN {
    cpu = ms * 1000 / (rps * secs)
    printf "%-28s %8.0f %8.2f %6.1f%% %6.1f%% %6.1f%% %6.1f%% %6.1f%% %6.2f %6.3f\n",
      who, rps, cpu, k, 100 - k, snd, rcv, ep, segs / req, cs / req }'
done
