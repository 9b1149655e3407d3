#!/usr/bin/env bash
# peers.sh: splitgate, nginx and HAProxy doing the same canary job, measured side by side.
#
# The job: 90% of requests go to a "stable" upstream and 10% to a "canary" upstream, and every
# request with `x-canary: always` goes to canary. The upstreams are one nginx listening on
# 28001 (answers "stable v1") and 28002 (answers "canary v2"). Cases:
#   http       HTTP/1.1 keep-alive through the proxy: wrk, CONNS connections, SECONDS long.
#              tally.lua sorts the answers by subset, so every row shows the canary share.
#   https      the same over TLS 1.3, terminated at the proxy (plain HTTP to the upstreams).
#   handshake  one new TLS 1.3 connection, with a full handshake, per request: ab (apache2-utils).
#              Why ab: wrk and h2load keep their SSL object across reconnects and resume the
#              session (PSK) on the next connection: logging nginx's $ssl_session_reused under
#              `Connection: close` showed every handshake after each connection slot's first one
#              resumed, for both (and h2load -D did not stop at the end of its duration). ab makes
#              a fresh SSL object per connection and never resumes, so every request pays for a
#              full handshake (ECDHE + the server's ECDSA P-256 signature) on every proxy alike.
#              ab speaks HTTP/1.0 without keep-alive: one connection per request. The row's
#              note shows conns/req, new TCP connections (/proc/net/snmp ActiveOpens) per
#              request over the run, which checks that on the spot. It reads 1 plus the proxy's
#              first connections to the upstreams (a few % in short runs); outside the private
#              network namespace (see isolation below) it counts the whole machine.
#              ab reports whole percentiles only, so handshake rows have no p99.9.
#   open       latency at a fixed rate (open loop: each request timed from when it was due, so a
#              stall counts against every request it held up): the load bench
#              (`cargo bench --bench load -- --scenario open`) sends RATE requests/s over CONNS
#              connections straight to the stable upstream (direct) and then through each proxy,
#              one after the other, all to the same nginx upstreams. Each proxy's row notes the
#              latency it adds over direct (its quantile minus direct's). The load bench starts
#              splitgate itself; nginx and HAProxy run while it measures, idle but for their turn.
#              The rate is -r, else half of HAProxy's rps in this run's http case, else 10000.
# Every proxy gets the same certificate (ECDSA P-256, made at run time in a temporary
# directory, never kept) and TLS 1.3; each TLS row notes what `openssl s_client` negotiated.
#
# Layout: the proxy under test is pinned to CPU 0 with one worker (splitgate --concurrency 1,
# nginx worker_processes 1, HAProxy nbthread 1); the upstreams and the load generator share
# CPU 1. That core usually runs out first, so besides rps the script reads the proxy's CPU time
# (utime+stime of its processes, /proc/PID/stat) around each run and reports cpu% (of one core)
# and req_per_cpu_sec (requests per CPU second the proxy used): the throughput-per-core figure
# to compare while no proxy is at 100%. core0%/core1% say how busy each core was in total:
# core0% far above cpu% means something else ran on the proxy's core: the row then notes
# "noisy" (more than 10 points of other load there).
#
# usage: benches/peers/peers.sh [-d SECONDS] [-c CONNS] [-k CASES] [--json FILE] [NAMES...]
#   -d SECONDS    length of each run (default 10)
#   -c CONNS      concurrent connections (default 64; keep it under HAProxy's maxconn, 4096)
#   -k CASES      comma-separated, from: http https handshake open (default: http https handshake)
#   -r RATE       requests/s of the open case (default: see open above)
#   --json FILE   also write the results and ratios as JSON
#   NAMES         from: direct nginx haproxy splitgate (default: all; haproxy when installed).
#                 direct = wrk straight to the stable upstream: the ceiling CPU 1 allows
#                 (http case only).
#   SPLITGATE_BIN the splitgate binary (default: target/release/splitgate in this repository)
#   SPLITGATE_PEERS_NS=0  stay in the machine's network namespace (see isolation below)
# e.g. benches/peers/peers.sh -d 5          benches/peers/peers.sh -k http haproxy splitgate
#      benches/peers/peers.sh -k http,open   (open at half of HAProxy's maximum)
#
# needs: 2+ CPUs, bash, wrk, nginx, curl, taskset, ps, openssl; ab for the handshake case;
#   haproxy optional; unshare and ip (root) for the private namespaces.  Debian: apt-get install -y wrk nginx-light haproxy curl openssl apache2-utils
# Ports: 127.0.0.1:28001-28002 (upstreams), 28080-28082 (http), 28443-28445 (https),
#   28090-28092 (splitgate admin, readiness, metrics); private to the run when isolated.
# Output: one row per case and proxy, then splitgate's ratios to each peer (above 1: splitgate
#   ahead). Exit status 1 when a row FAILED (a proxy did not start, misrouted, or the load
#   generator broke), 2 on bad usage or a missing tool. Figures compare only within one run.

set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin=${SPLITGATE_BIN:-$repo/target/release/splitgate}
hz=$(getconf CLK_TCK)
tls_name=bench.example.com

declare -A http_port=([direct]=28001 [splitgate]=28080 [nginx]=28081 [haproxy]=28082)
declare -A tls_port=([splitgate]=28443 [nginx]=28444 [haproxy]=28445)
all_ports="28001 28002 28080 28081 28082 28443 28444 28445 28090 28091 28092"

die() { echo "peers.sh: $*" >&2; exit 2; }
usage() { sed -n '/^# usage:/,/^# e\.g\./s/^# \{0,1\}//p' "$0"; }

# ---- isolation -------------------------------------------------------------------------------
# When allowed (root), the script runs itself again inside private network and mount namespaces:
# its ports cannot clash with anything else on the machine, the TCP counters in /proc/net/snmp
# count this run's connections only, and a private /etc/hosts can map the TLS name to 127.0.0.1.
# SPLITGATE_PEERS_NS=0 turns that off.
isolated=0
case ${SPLITGATE_PEERS_NS:-} in
  1)
    isolated=1
    ip link set lo up || die "could not bring up lo in the private network namespace"
    ;;
  0) ;;
  *)
    if command -v unshare >/dev/null && command -v ip >/dev/null && unshare -n -m true 2>/dev/null; then
      SPLITGATE_PEERS_NS=1 exec unshare -n -m -- bash "$0" "$@"
    fi
    ;;
esac

# ---- arguments -------------------------------------------------------------------------------
secs=10 conns=64 cases_arg="http,https,handshake" json="" names=() rate=
while [ $# -gt 0 ]; do
  case $1 in
    -d | -c | -k | -r | --json)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      case $1 in -d) secs=$2 ;; -c) conns=$2 ;; -k) cases_arg=$2 ;; -r) rate=$2 ;; --json) json=$2 ;; esac
      shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) names+=("$1"); shift ;;
  esac
done
[[ $secs =~ ^[1-9][0-9]*$ ]] || die "-d wants whole seconds above 0, not '$secs'"
[[ $conns =~ ^[1-9][0-9]*$ ]] || die "-c wants a connection count above 0, not '$conns'"
read -r -a cases <<<"${cases_arg//,/ }"
[ -z "$rate" ] || [[ $rate =~ ^[1-9][0-9]*$ ]] || die "-r wants requests/s above 0, not '$rate'"
[ ${#cases[@]} -gt 0 ] || die "-k names no case (from: http https handshake open)"
for k in "${cases[@]}"; do
  case $k in http | https | handshake | open) ;; *) die "unknown case '$k' (from: http https handshake open)" ;; esac
done
names_given=${#names[@]}
if [ "$names_given" -eq 0 ]; then
  names=(direct nginx)
  command -v haproxy >/dev/null && names+=(haproxy)
  names+=(splitgate)
fi
for n in "${names[@]}"; do
  case $n in direct | nginx | haproxy | splitgate) ;; *) die "unknown proxy '$n' (from: direct nginx haproxy splitgate)" ;; esac
done
want_tls=0
for k in "${cases[@]}"; do [ "$k" = https ] || [ "$k" = handshake ] && want_tls=1; done

# ---- tools -----------------------------------------------------------------------------------
need() { # tool, install hint
  command -v "$1" >/dev/null || die "missing $1: $2"
}
need taskset "apt-get install -y util-linux"
need wrk "apt-get install -y wrk"
need nginx "apt-get install -y nginx-light (nginx runs the upstreams)"
need curl "apt-get install -y curl"
need ps "apt-get install -y procps"
need openssl "apt-get install -y openssl (the test certificate, TLS checks)"
for k in "${cases[@]}"; do [ "$k" = handshake ] && need ab "apt-get install -y apache2-utils (the handshake case uses ab)"; done
taskset -c 1 true 2>/dev/null || die "needs CPUs 0 and 1 (the proxy on 0, upstreams and load on 1); taskset -c 1 failed"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $all_ports; do
  port_busy "$p" && die "127.0.0.1:$p is already in use (another peers.sh still running?)"
done
if [ -n "$json" ]; then
  : >"$json" 2>/dev/null || die "cannot write --json file '$json'"
fi

# ---- process bookkeeping ---------------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/splitgate-peers.XXXXXX") || die "mktemp failed"
started=() # pids of the servers this script started and has not stopped yet

alive() { # pid: running (not gone, not a zombie)
  local st
  st=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ]
}
tree_pids() { # pid -> that pid and all its descendants (nginx: master + workers), one per line
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { parent[$1] = $2 }
    END {
      keep[root] = 1; print root
      do { grew = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; print p; grew = 1 } } while (grew)
    }'
}
stop_tree() { # pid: TERM it, then KILL whatever of its tree is left after 5 s
  local root=$1 tree i p rest=()
  mapfile -t tree < <(tree_pids "$root")
  kill -TERM "$root" 2>/dev/null
  for ((i = 0; i < 50; i++)); do
    alive "$root" || break
    sleep 0.1
  done
  for p in "${tree[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
  wait "$root" 2>/dev/null
  for p in "${started[@]}"; do [ "$p" != "$root" ] && rest+=("$p"); done
  started=("${rest[@]}")
}
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  local p
  for p in "${started[@]}"; do stop_tree "$p"; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "peers.sh: interrupted" >&2; exit 130' INT TERM

# ---- measurements ----------------------------------------------------------------------------
cpu_ticks() { # pids... -> their utime+stime summed, in clock ticks
  local p
  for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null; done | awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}
core_times() { # -> "busy0 total0 busy1 total1" in ticks since boot (/proc/stat)
  awk '$1 == "cpu0" || $1 == "cpu1" { tot = 0; for (i = 2; i <= 9; i++) tot += $i; printf "%d %d ", tot - $5 - $6, tot }' /proc/stat
}
active_opens() { awk '$1 == "Tcp:" && $2 ~ /^[0-9]/ { print $6 }' /proc/net/snmp; } # connect()s so far

m_pids=()
measure_begin() { # proxy pid or ""
  m_pids=()
  [ -n "$1" ] && mapfile -t m_pids < <(tree_pids "$1")
  m_t0=$(cpu_ticks "${m_pids[@]}") m_c0=$(core_times) m_o0=$(active_opens) m_n0=$(date +%s%N)
}
measure_end() {
  m_n1=$(date +%s%N) m_t1=$(cpu_ticks "${m_pids[@]}") m_c1=$(core_times) m_o1=$(active_opens)
}

# ---- results ---------------------------------------------------------------------------------
results=$tmp/results.tsv # case proxy status rps p50 p99 p999 errors canary_pct cpu_pct req_per_cpu core0 core1 requests note
: >"$results"
any_failed=0
fmt="%-9s %-9s %8s %7s %7s %8s %6s %10s %6s %15s %6s %6s  %s\n"
print_header() {
  # shellcheck disable=SC2059 # fmt is this script's own row format
  printf "$fmt" case proxy rps p50_us p99_us p999_us errors canary_pct cpu% req_per_cpu_sec core0% core1% notes
}
emit_row() { # the 15 result fields
  (IFS=$'\t'; echo "$*") >>"$results"
  # shellcheck disable=SC2059
  printf "$fmt" "$1" "$2" "$4" "$5" "$6" "$7" "$8" "$9" "${10}" "${11}" "${12}" "${13}" "${15:-}"
}
emit_other() { # case proxy status(failed|skipped) reason
  local reason=${4//$'\t'/ }
  printf '%s\t%s\t%s\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t-\t%s\n' "$1" "$2" "$3" "$reason" >>"$results"
  printf "%-9s %-9s %s\n" "$1" "$2" "${3^^}: $reason"
  [ "$3" = failed ] && any_failed=1
}

# ---- set-up ----------------------------------------------------------------------------------
for f in upstreams.nginx.conf nginx.conf haproxy.cfg splitgate-http.yaml splitgate-https.yaml; do
  [ -r "$here/$f" ] || die "missing $here/$f"
  sed "s|@TMP@|$tmp|g" "$here/$f" >"$tmp/$f"
done
[ -r "$here/tally.lua" ] || die "missing $here/tally.lua"

tls_connect=$tls_name hosts_note=""
# nginx and HAProxy load their TLS listener in every case, so the certificate is always made
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -keyout "$tmp/key.pem" -out "$tmp/cert.pem" -subj "/CN=$tls_name" \
  -addext "subjectAltName=DNS:$tls_name" >"$tmp/openssl.log" 2>&1 ||
  die "openssl could not make the test certificate: $(tail -n 2 "$tmp/openssl.log")"
cat "$tmp/cert.pem" "$tmp/key.pem" >"$tmp/bench.pem" # HAProxy: certificate and key in one file
if [ "$want_tls" = 1 ] && ! getent hosts "$tls_name" | grep -q '^127\.0\.0\.1[[:space:]]'; then
  # The TLS clients must send SNI $tls_name, so it has to resolve to 127.0.0.1. Inside the
  # private mount namespace a copy of /etc/hosts with that line is mounted over it; elsewhere
  # they connect to 127.0.0.1 instead (wrk then sends SNI "127.0.0.1", ab none).
  { cat /etc/hosts 2>/dev/null; echo "127.0.0.1 $tls_name"; } >"$tmp/hosts"
  if [ "$isolated" = 1 ] && mount --bind "$tmp/hosts" /etc/hosts 2>/dev/null; then
    hosts_note="$tls_name -> 127.0.0.1 in a private /etc/hosts"
  else
    tls_connect=127.0.0.1
    hosts_note="$tls_name does not resolve: TLS clients connect to 127.0.0.1 (no real SNI)"
  fi
fi

on_cpu1() { taskset -c 1 "$@"; } # the load generators' core

# curl against a proxy: scheme port [curl args...] (path /)
probe() {
  local scheme=$1 port=$2
  shift 2
  if [ "$scheme" = https ]; then
    curl -sk --max-time 2 --resolve "$tls_name:$port:127.0.0.1" "$@" "https://$tls_name:$port/"
  else
    curl -s --max-time 2 "$@" "http://127.0.0.1:$port/"
  fi
}

taskset -c 1 nginx -p "$tmp" -e "$tmp/upstreams-startup.log" -c "$tmp/upstreams.nginx.conf" >"$tmp/upstreams.log" 2>&1 &
upstreams_pid=$!
started+=("$upstreams_pid")
for ((i = 0; i < 100; i++)); do
  [ "$(curl -s --max-time 1 http://127.0.0.1:28001/)" = "stable v1" ] &&
    [ "$(curl -s --max-time 1 http://127.0.0.1:28002/)" = "canary v2" ] && break
  alive "$upstreams_pid" || die "the upstream nginx did not start: $(tail -n 3 "$tmp/upstreams-error.log" "$tmp/upstreams.log" 2>/dev/null)"
  sleep 0.1
done
[ "$i" -lt 100 ] || die "the upstream nginx is not answering on 28001/28002 after 10 s"

# ---- one proxy ---------------------------------------------------------------------------------
proxy_pid="" proxy_log="" fail_reason=""
log_tail() { # the last lines of the proxy's logs, colours stripped, on one line
  cat "$proxy_log" "$tmp"/nginx-startup.log "$tmp"/nginx-error.log 2>/dev/null |
    sed 's/\x1b\[[0-9;]*m//g' | grep -v '^[[:space:]]*$' | tail -n 3 | tr '\n' '|' | sed 's/|$//; s/|/ | /g' | cut -c1-400
}
start_proxy() { # name scheme
  proxy_log=$tmp/$1-$2.log
  rm -f "$tmp"/nginx-startup.log "$tmp"/nginx-error.log
  case $1 in
    nginx) taskset -c 0 nginx -p "$tmp" -e "$tmp/nginx-startup.log" -c "$tmp/nginx.conf" >"$proxy_log" 2>&1 & ;;
    haproxy) taskset -c 0 haproxy -db -f "$tmp/haproxy.cfg" >"$proxy_log" 2>&1 & ;;
    splitgate) taskset -c 0 "$bin" run -c "$tmp/splitgate-$2.yaml" --concurrency 1 >"$proxy_log" 2>&1 & ;;
  esac
  proxy_pid=$!
  started+=("$proxy_pid")
}
wait_ready() { # scheme port: until / answers 200; else fail_reason
  local i code
  for ((i = 0; i < 100; i++)); do
    if ! alive "$proxy_pid"; then
      wait "$proxy_pid" 2>/dev/null
      fail_reason="exited (status $?) at start: $(log_tail)"
      return 1
    fi
    code=$(probe "$1" "$2" -o /dev/null -w '%{http_code}')
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  fail_reason="no 200 on :$2 within 10 s (last status ${code:-none}): $(log_tail)"
  return 1
}
check_routing() { # scheme port: x-canary: always -> canary, plain -> stable or canary
  local i body
  for ((i = 0; i < 5; i++)); do
    body=$(probe "$1" "$2" -H 'x-canary: always')
    [[ $body == canary* ]] || { fail_reason="x-canary: always got '${body:0:60}', not canary"; return 1; }
  done
  body=$(probe "$1" "$2")
  [[ $body == stable* || $body == canary* ]] || { fail_reason="a plain request got '${body:0:60}'"; return 1; }
}
tls_info() { # port -> "TLSv1.3/TLS_AES_256_GCM_SHA384/X25519/ECDSA" as negotiated by openssl s_client
  timeout 5 openssl s_client -connect "127.0.0.1:$1" -servername "$tls_name" -tls1_3 -brief </dev/null 2>&1 |
    awk -F': *' '/^Protocol version/ { v = $2 } /^Ciphersuite/ { c = $2 } /^Server Temp Key/ { split($2, k, ","); g = k[1] }
      /^Signature type/ { s = $2 } END { if (v == "") print "tls=?"; else print v "/" c "/" g "/" s }'
}

run_one() { # case name
  local kase=$1 name=$2 scheme=https port url out note="" row
  case $name in
    direct) [ "$kase" = http ] || return 0 ;;
    haproxy) command -v haproxy >/dev/null || { emit_other "$kase" haproxy skipped "haproxy is not installed (apt-get install -y haproxy)"; return; } ;;
    splitgate) [ -x "$bin" ] || { emit_other "$kase" splitgate skipped "no binary at $bin (cargo build --release)"; return; } ;;
  esac
  if [ "$kase" = http ]; then
    scheme=http port=${http_port[$name]} url=http://127.0.0.1:$port/
  else
    port=${tls_port[$name]} url=https://$tls_connect:$port/
  fi
  proxy_pid=""
  if [ "$name" = direct ]; then
    note="no proxy: the ceiling of CPU 1"
  else
    start_proxy "$name" "$scheme"
    if ! wait_ready "$scheme" "$port" || ! check_routing "$scheme" "$port"; then
      alive "$proxy_pid" && stop_tree "$proxy_pid"
      emit_other "$kase" "$name" failed "$fail_reason"
      return
    fi
    [ "$scheme" = https ] && note=$(tls_info "$port")
  fi

  local extra=()
  [ "$tls_connect" = 127.0.0.1 ] && [ "$scheme" = https ] && extra=(-H "Host: $tls_name")
  measure_begin "$proxy_pid"
  if [ "$kase" = handshake ]; then
    rm -f "$tmp/ab.csv"
    # -n after -t: -t alone caps the run at 50000 requests
    out=$(on_cpu1 ab -q -r -c "$conns" -t "$secs" -n 100000000 -f TLS1.3 -e "$tmp/ab.csv" "${extra[@]}" "$url" 2>&1)
  else
    out=$(on_cpu1 wrk -t1 -c "$conns" -d "${secs}s" -s "$here/tally.lua" "${extra[@]}" "$url" 2>&1)
  fi
  measure_end
  [ -n "$proxy_pid" ] && stop_tree "$proxy_pid"

  local common=(-v t0="$m_t0" -v t1="$m_t1" -v hz="$hz" -v n0="$m_n0" -v n1="$m_n1" -v o0="$m_o0" -v o1="$m_o1"
    -v c0="$m_c0" -v c1="$m_c1" -v isolated="$isolated" -v has_cpu="${proxy_pid:+1}" -v kase="$kase" -v name="$name" -v note="$note")
  # shared tail of both parsers: cpu and core figures, then one tab-separated row
  local finish='
    function pct(x) { return sprintf("%.0f", x) }
    function finish(requests, rps, p50, p99, p999, errors, canary,    wall, cpu, cpu_pct, per_cpu, a, b, cores0, cores1, opens, other0) {
      wall = (n1 - n0) / 1e9; cpu = (t1 - t0) / hz
      cpu_pct = has_cpu ? sprintf("%.1f", 100 * cpu / wall) : "-"
      per_cpu = (has_cpu && cpu > 0) ? sprintf("%.0f", requests / cpu) : "-"
      split(c0, a, " "); split(c1, b, " ")
      cores0 = (b[2] > a[2]) ? pct(100 * (b[1] - a[1]) / (b[2] - a[2])) : "-"
      cores1 = (b[4] > a[4]) ? pct(100 * (b[3] - a[3]) / (b[4] - a[4])) : "-"
      other0 = (has_cpu && cores0 != "-") ? cores0 - cpu_pct : 0
      if (other0 > 10) note = note (note == "" ? "" : "; ") sprintf("noisy: +%.0f%% other load on CPU 0", other0)
      if (kase == "handshake") {
        opens = (requests > 0) ? sprintf("conns/req=%.2f%s", (o1 - o0) / requests, isolated ? "" : " (machine-wide)") : "conns/req=-"
        note = note (note == "" ? "" : "; ") opens
      }
      printf "%s\t%s\tok\t%.0f\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", kase, name, rps, p50, p99, p999, errors, canary, cpu_pct, per_cpu, cores0, cores1, requests, note
    }'
  if [ "$kase" = handshake ]; then
    row=$( (echo "$out"; sed 's/^/CSV /' "$tmp/ab.csv" 2>/dev/null) | awk -F'[:,] *' "${common[@]}" "$finish"'
      /^Complete requests/ { done_n = $2 } /^Failed requests/ { failed = $2 } /^Non-2xx responses/ { non2xx = $2 }
      /^Time taken for tests/ { split($2, tt, " "); took = tt[1] }
      /^CSV 50,/ { p50 = sprintf("%.0f", $2 * 1000) } /^CSV 99,/ { p99 = sprintf("%.0f", $2 * 1000) }
      END {
        if (done_n == "" || took <= 0) exit 1
        if (done_n <= 100) p50 = p99 = "" # ab indexes past its table for tiny runs
        finish(done_n, done_n / took, p50 == "" ? "-" : p50, p99 == "" ? "-" : p99, "-", failed + non2xx, "-")
      }')
  else
    row=$(echo "$out" | awk "${common[@]}" "$finish"'
      /^TALLY / { for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } seen = 1 }
      END {
        if (!seen || v["duration_us"] <= 0) exit 1
        sc = v["stable"] + v["canary"]
        finish(v["requests"], v["requests"] / (v["duration_us"] / 1e6), v["p50_us"], v["p99_us"], v["p999_us"],
               v["sock_errors"] + v["bad"], sc > 0 ? sprintf("%.2f", 100 * v["canary"] / sc) : "-")
      }')
  fi
  if [ -z "$row" ]; then
    emit_other "$kase" "$name" failed "the load generator gave no result: $(echo "$out" | grep -v '^[[:space:]]*$' | tail -n 2 | tr '\n' ' ' | cut -c1-300)"
    return
  fi
  local f
  IFS=$'\t' read -r -a f <<<"$row"
  emit_row "${f[@]}"
}

# ---- the open case: one load bench run over every proxy -------------------------------------------
run_open() {
  local name peers=() running=() r=$rate out rows
  if [ -z "$r" ]; then
    r=$(awk -F'\t' '$1 == "http" && $2 == "haproxy" && $3 == "ok" { printf "%.0f", $4 / 2 }' "$results")
    [ -n "$r" ] || r=10000
  fi
  command -v cargo >/dev/null || { emit_other open all failed "the open case runs the load bench and needs cargo"; return; }
  [ -x "$bin" ] || { emit_other open splitgate failed "no binary at $bin (cargo build --release)"; return; }
  for name in "${names[@]}"; do
    case $name in
      nginx | haproxy)
        if [ "$name" = haproxy ] && ! command -v haproxy >/dev/null; then
          emit_other open haproxy skipped "haproxy is not installed (apt-get install -y haproxy)"
          continue
        fi
        start_proxy "$name" http
        if ! wait_ready http "${http_port[$name]}" || ! check_routing http "${http_port[$name]}"; then
          alive "$proxy_pid" && stop_tree "$proxy_pid"
          emit_other open "$name" failed "$fail_reason"
          continue
        fi
        running+=("$proxy_pid")
        peers+=(--peer "$name=127.0.0.1:${http_port[$name]}")
        ;;
    esac
  done
  echo "peers.sh: open: $r requests/s, $conns connections, ${secs}s each: direct, splitgate${peers[*]:+, the others}"
  out=$(cd "$repo" && cargo bench --quiet --bench load -- --scenario open --rate "$r" \
    --duration "${secs}s" --connections "$conns" --upstreams 127.0.0.1:28001,127.0.0.1:28002 \
    --pin-gateway 0 --pin-client 1 --gateway-bin "$bin" --json "$tmp/open.json" "${peers[@]}" 2>"$tmp/open.log")
  for name in "${running[@]}"; do stop_tree "$name"; done
  # The load bench's table: "open NAME rps p50 p90 p99 p99.9 errors stable X% canary Y%", then
  # "open added - p50 p90 p99 p99.9 - NAME minus direct" per proxy.
  rows=$(echo "$out" | awk -v r="$r" '
    $1 != "open" { next }
    $2 == "added" { add[$9] = sprintf("adds p50 %s p99 %s p99.9 %s us over direct at %s/s", $4, $6, $7, r); next }
    { n++; name[n] = $2; rps[n] = $3; p50[n] = $4; p99[n] = $6; p999[n] = $7; err[n] = $8
      c = $12; sub(/%$/, "", c); canary[n] = c }
    END {
      for (i = 1; i <= n; i++) {
        proxy = name[i] == "gateway" ? "splitgate" : name[i]
        note = name[i] == "direct" ? sprintf("no proxy, at %s/s", r) : add[name[i]]
        printf "open\t%s\tok\t%s\t%s\t%s\t%s\t%s\t%s\t-\t-\t-\t-\t-\t%s\n", proxy, rps[i], p50[i], p99[i], p999[i], err[i], canary[i], note
      }
    }')
  if [ -z "$rows" ]; then
    emit_other open all failed "the load bench gave no result: $(grep -v '^[[:space:]]*$' "$tmp/open.log" | tail -n 2 | tr '\n' ' ' | cut -c1-300)"
    return
  fi
  local f row
  while IFS= read -r row; do
    IFS=$'\t' read -r -a f <<<"$row"
    emit_row "${f[@]}"
  done <<<"$rows"
}

# ---- run -------------------------------------------------------------------------------------
versions="nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
command -v haproxy >/dev/null && versions+=", haproxy $(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')"
[ -x "$bin" ] && versions+=", $("$bin" --version 2>/dev/null)"
echo "peers.sh: ${secs}s per run, $conns connections; proxy on CPU 0, upstreams + load generator on CPU 1"
echo "peers.sh: cases: ${cases[*]}; proxies: ${names[*]}; $versions"
[ -x "$bin" ] || echo "peers.sh: splitgate: no binary at $bin (cargo build --release)"
if [ "$isolated" = 1 ]; then
  echo "peers.sh: in private network + mount namespaces${hosts_note:+; $hosts_note}"
else
  echo "peers.sh: in the machine's network namespace (unshare -n not allowed or SPLITGATE_PEERS_NS=0)${hosts_note:+; $hosts_note}"
fi
echo
print_header
for kase in "${cases[@]}"; do
  if [ "$kase" = open ]; then
    run_open
    continue
  fi
  for name in "${names[@]}"; do
    run_one "$kase" "$name"
  done
done

# ---- ratios and JSON --------------------------------------------------------------------------
# (the open case is left out: every proxy there runs at the same rate; its rows note the latency
# each adds)
# shellcheck disable=SC2016 # awk program, not shell
ratio_awk='
  BEGIN { FS = "\t" }
  $3 == "ok" && $1 != "open" { rps[$1, $2] = $4; per[$1, $2] = $11; if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 } peers[$1] = peers[$1] " " $2 }
  function ratio(a, b) { return (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) ? sprintf("%.2f", a / b) : "-" }
  END {
    for (i = 1; i <= n; i++) {
      k = order[i]; if (!((k, "splitgate") in rps)) continue
      m = split(peers[k], p, " ")
      for (j = 1; j <= m; j++) if (p[j] != "splitgate")
        emit(k, p[j], ratio(rps[k, "splitgate"], rps[k, p[j]]), ratio(per[k, "splitgate"], per[k, p[j]]))
    }
  }'
echo
echo "splitgate / peer (above 1: splitgate ahead)"
printf "%-9s %-9s %8s %15s\n" case peer rps req_per_cpu_sec
ratios=$(awk "$ratio_awk"' function emit(k, peer, r, c) { printf "%-9s %-9s %8s %15s\n", k, peer, r == "-" ? r : r "x", c == "-" ? c : c "x" }' "$results")
if [ -n "$ratios" ]; then echo "$ratios"; else echo "(none: splitgate and a peer must both finish an http, https or handshake case)"; fi

if [ -n "$json" ]; then
  {
    echo "{"
    echo "  \"seconds\": $secs, \"connections\": $conns,"
    echo "  \"results\": ["
    awk -F'\t' '
      function q(s) { gsub(/\\/, "\\\\", s); gsub(/"/, "\\\"", s); return "\"" s "\"" }
      function num(s) { return (s ~ /^-?[0-9]+(\.[0-9]+)?$/) ? s + 0 : "null" }
      {
        printf "%s    {\"case\": %s, \"proxy\": %s, \"status\": %s, \"rps\": %s, \"p50_us\": %s, \"p99_us\": %s, \"p999_us\": %s, \"errors\": %s, \"canary_pct\": %s, \"cpu_pct\": %s, \"req_per_cpu_sec\": %s, \"core0_pct\": %s, \"core1_pct\": %s, \"requests\": %s, \"note\": %s}",
          (NR > 1 ? ",\n" : ""), q($1), q($2), q($3), num($4), num($5), num($6), num($7), num($8), num($9), num($10), num($11), num($12), num($13), num($14), q($15)
      }
      END { if (NR) print "" }' "$results"
    echo "  ],"
    echo "  \"splitgate_ratios\": ["
    awk "$ratio_awk"'
      function jn(s) { return s == "-" ? "null" : s }
      function emit(k, peer, r, c) { printf "%s    {\"case\": \"%s\", \"peer\": \"%s\", \"rps\": %s, \"req_per_cpu_sec\": %s}", (cnt++ ? ",\n" : ""), k, peer, jn(r), jn(c) }
      END { if (cnt) print "" }' "$results"
    echo "  ]"
    echo "}"
  } >"$json"
  echo "peers.sh: wrote $json"
fi
exit "$any_failed"
