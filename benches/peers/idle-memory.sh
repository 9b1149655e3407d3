#!/usr/bin/env bash
# Memory per idle keep-alive client connection, side by side: splitgate, HAProxy and nginx.
#
# The method is that of the load bench's `idle` scenario (benches/load.rs; BENCHMARKS.md's 26.9 KiB),
# applied to each proxy alike, with a warm-up of its own and a 2 s hold (the load bench: about 5 s at
# 1000 requests/s over 16 connections, 1 s). For each proxy in turn: start it fresh on CPU 0; send
# warm-up traffic (WARM requests over 16 keep-alive connections, default 5000); read its RSS (VmRSS
# from /proc/PID/status, summed over the proxy's processes: nginx's master and worker); open CONNS
# keep-alive TCP connections (64 set up at a time), each sending ONE complete request
# (`GET / HTTP/1.1`, `Host: bench.example.com`, routed by every peer config to the stable/canary upstreams)
# and reading its whole answer (200, "stable..." or "canary...", no `Connection: close`), then staying
# open and idle; wait HOLD seconds (default 2); read the RSS again, and count the ESTABLISHED sockets
# on the proxy's port (ss); the client then counts how many of its connections the proxy closed.
# Printed per proxy:
#   rss_before_kib  after warm-up    rss_idle_kib  with the idle connections
#   kib_per_conn    (rss_idle - rss_before) / connections opened (= CONNS when all opened)
#   open            ESTABLISHED sockets on the proxy port / CONNS;  notes: failures, closes, set-up time
# The client is Python 3 (asyncio, stdlib only; written to the temporary directory from this script)
# and runs on CPU 1 with the upstream nginx. It raises its own RLIMIT_NOFILE.
#
# Peers and ports as in ../shared/peers/peer-cpu.sh: upstream nginx (nginx-upstreams.conf) on
# 127.0.0.1:19001/19002, splitgate 18080 (admin/readiness/metrics 18090-18092), nginx 18081,
# haproxy 18082. Configs are copied into a temporary directory and rewritten with sed there:
#   - log and pid paths into the temporary directory (as peer-cpu.sh does);
#   - connection caps lifted to CONNS + 1024 where the shipped value is lower: HAProxy's global
#     `maxconn` (5000 shipped) and nginx's `worker_connections` (4096 shipped). The run says so.
#     HAProxy then wants about 2 * maxconn descriptors and exits if it cannot have them (strict-limits
#     is on by default in 2.6): where the hard limit is lower, `no strict-limits` goes into its global
#     section, so it starts on the limit it has (one descriptor per idle client is all this test
#     needs). The run says so.
#   - splitgate has no cap in its config: it derives one per listener from its descriptor limit,
#     (limit - 256) / 2, after raising its soft limit to the hard one. The script raises `ulimit -n`
#     (soft and hard) to max(65536, 2 * CONNS + 2048) when it may; where the hard limit cannot be
#     raised that far (a container without CAP_SYS_RESOURCE), the derived cap would fall below
#     CONNS + 1024, and the temporary splitgate.yaml gets `limits: { max_connections: CONNS + 1024 }`
#     on its listener instead. The run says so.
# The upstream nginx is shared by all proxies and started once, as in peer-cpu.sh. Every process the
# script starts (upstreams, proxies, the client) is stopped on exit, failure or interrupt included.
#
# usage: benches/peers/idle-memory.sh [-n CONNS] [-t HOLD_SECONDS] [-w WARM_REQUESTS] [names...]
#   names: haproxy nginx splitgate   (default: haproxy nginx splitgate)
#   SPLITGATE_BIN  the splitgate binary (default: target/release/splitgate in this repository)
#   PEERS_DIR      the peer configs (default: ../shared/peers beside this repository)
# e.g. SPLITGATE_BIN=/work/target-bench/release/splitgate benches/peers/idle-memory.sh
#      benches/peers/idle-memory.sh -n 2000 splitgate
# needs: 2 CPUs, bash, python3 (3.7+), nginx, haproxy, curl, ss (iproute2), taskset, ps; root helps
#   (to raise the hard descriptor limit).  Debian: apt-get install -y nginx-light haproxy curl iproute2
# Exit status: 0 when every proxy kept all CONNS connections open, 1 otherwise, 2 on bad usage or a
# missing tool. Figures compare best within one run; RSS is a page-granular, allocator-dependent
# measure, so repeat the run and expect a few tenths of a KiB of spread.
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
peers=${PEERS_DIR:-$repo/../shared/peers}
bin=${SPLITGATE_BIN:-$repo/target/release/splitgate}
conns=10000 hold=2 warm=5000 host=bench.example.com

die() { echo "idle-memory.sh: $*" >&2; exit 2; }
while getopts "n:t:w:h" o; do
  case $o in
    n) conns=$OPTARG ;; t) hold=$OPTARG ;; w) warm=$OPTARG ;;
    h) sed -n '/^# usage:/,/^# needs:/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
names=(${*:-haproxy nginx splitgate})
[[ $conns =~ ^[1-9][0-9]*$ ]] || die "-n wants a connection count above 0, not '$conns'"
[[ $hold =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "-t wants seconds, not '$hold'"
[[ $warm =~ ^[1-9][0-9]*$ ]] || die "-w wants a request count above 0, not '$warm'"
for n in "${names[@]}"; do case $n in haproxy | nginx | splitgate) ;; *) die "unknown proxy '$n' (from: haproxy nginx splitgate)" ;; esac; done
for t in python3 nginx curl ss taskset ps awk; do command -v $t >/dev/null || die "missing $t (apt-get install -y nginx-light haproxy curl iproute2)"; done
for n in "${names[@]}"; do
  case $n in
    haproxy) command -v haproxy >/dev/null || die "missing haproxy (apt-get install -y haproxy)" ;;
    splitgate) [ -x "$bin" ] || die "no splitgate binary at $bin (cargo build --release, or set SPLITGATE_BIN)" ;;
  esac
done
for f in nginx-upstreams.conf nginx-proxy.conf haproxy.cfg splitgate.yaml; do [ -r "$peers/$f" ] || die "missing $peers/$f (set PEERS_DIR)"; done
taskset -c 1 true 2>/dev/null || die "needs CPUs 0 and 1 (proxy on 0, client and upstreams on 1)"
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in 19001 19002 18080 18081 18082 18090 18091 18092; do
  port_busy $p && die "127.0.0.1:$p is already in use (another peer script running?)"
done

# ---- descriptors: raise soft and hard as far as allowed; children (proxies, client) inherit ----
cap=$((conns + 1024))                          # the connection cap each proxy needs at least
want_fds=$((2 * conns + 2048)); [ $want_fds -lt 65536 ] && want_fds=65536
ulimit -Hn $want_fds 2>/dev/null || true       # needs CAP_SYS_RESOURCE above the current hard limit
hard=$(ulimit -Hn); [ "$hard" = unlimited ] && hard=$want_fds
fds=$want_fds; [ "$hard" -lt "$fds" ] && fds=$hard
ulimit -n "$fds" || die "cannot set ulimit -n $fds"
[ "$fds" -ge $((conns + 512)) ] || die "the descriptor limit is $fds (hard $hard): too low for $conns connections"

# ---- bookkeeping and cleanup --------------------------------------------------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/idle-memory.XXXXXX") || die "mktemp failed"
pids=()   # roots of the process trees this script started
tree() { ps -e -o pid=,ppid= | awk -v root="$1" '{ parent[$1] = $2 } END { keep[root]=1; print root; do { g=0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p]=1; print p; g=1 } } while (g) }'; }
alive() { local st; st=$(awk '{ sub(/^.*\) /, ""); print $1 }' "/proc/$1/stat" 2>/dev/null) || return 1; [ -n "$st" ] && [ "$st" != Z ]; }
stop_tree() { # pid: TERM the tree's root, KILL whatever of the tree is left after 5 s
  local root=$1 t p i rest=()
  t=$(tree "$root"); kill "$root" 2>/dev/null
  for ((i = 0; i < 50; i++)); do alive "$root" || break; sleep 0.1; done
  for p in $t; do alive "$p" && kill -9 "$p" 2>/dev/null; done
  wait "$root" 2>/dev/null
  for p in "${pids[@]}"; do [ "$p" != "$root" ] && rest+=("$p"); done
  pids=("${rest[@]}")
}
cleanup() { # the newest first: the client, then the proxy, then the upstreams
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_tree "${pids[i]}"; done
  rm -rf "$tmp"
}
pause() { sleep "$1" & pids+=($!); wait $!; pids=("${pids[@]:0:${#pids[@]}-1}"); } # a sleep a signal can cut short
trap cleanup EXIT
trap 'echo "idle-memory.sh: interrupted" >&2; exit 130' INT TERM

# ---- configs, rewritten into $tmp -----------------------------------------------------------
notes=()
sed "s#/tmp/lab-upstreams#$tmp/upstreams#g" "$peers/nginx-upstreams.conf" > "$tmp/upstreams.conf"
sed "s#^\(\s*\)error_log .*#\1error_log $tmp/proxy-error.log;#; s#^\(\s*\)pid .*#\1pid $tmp/proxy.pid;#" "$peers/nginx-proxy.conf" > "$tmp/nginx-proxy.conf"
wc_now=$(grep -o 'worker_connections *[0-9]*' "$tmp/nginx-proxy.conf" | head -n 1 | tr -dc 0-9)
if [ -z "$wc_now" ] || [ "$wc_now" -lt $cap ]; then
  sed -i "s#worker_connections *[0-9]*;#worker_connections $cap;#" "$tmp/nginx-proxy.conf"
  notes+=("nginx: worker_connections ${wc_now:-(default 512)} -> $cap in the temporary copy")
fi
cp "$peers/haproxy.cfg" "$tmp/haproxy.cfg"
mc_now=$(awk '$1 == "global" { g = 1; next } /^[^ \t#]/ { g = 0 } g && $1 == "maxconn" { print $2; exit }' "$tmp/haproxy.cfg")
if [ -n "$mc_now" ] && [ "$mc_now" -lt $cap ]; then
  sed -i "s#^\(\s*\)maxconn\s\+$mc_now\s*\$#\1maxconn $cap#" "$tmp/haproxy.cfg"
  notes+=("haproxy: global maxconn $mc_now -> $cap in the temporary copy")
fi
# HAProxy asks for about 2 * maxconn descriptors and, with strict-limits on by default (2.6), exits
# when setrlimit refuses them. Idle clients need one each (plus a few upstream), so where the hard
# limit is lower, `no strict-limits` lets it start on what it may have (it then only warns).
mc=$(awk '$1 == "global" { g = 1; next } /^[^ \t#]/ { g = 0 } g && $1 == "maxconn" { print $2; exit }' "$tmp/haproxy.cfg")
if [ -n "$mc" ] && [ $((2 * mc + 100)) -gt "$fds" ] && ! grep -q 'strict-limits' "$tmp/haproxy.cfg"; then
  sed -i "s#^global\s*\$#&\n  no strict-limits#" "$tmp/haproxy.cfg"
  notes+=("haproxy: global 'no strict-limits' added (maxconn $mc wants about $((2 * mc)) descriptors, the hard limit is $hard; $conns idle clients need about $conns)")
fi
cp "$peers/splitgate.yaml" "$tmp/splitgate.yaml"
derived=$(((fds - 256) / 2))                   # splitgate's own cap for its one proxy listener
if [ $derived -lt $cap ]; then
  grep -q 'max_connections:' "$tmp/splitgate.yaml" && die "$peers/splitgate.yaml already sets a max_connections: edit this script"
  sed -i "s#^\(\s*\)address: 127.0.0.1:18080\s*\$#&\n\1limits: { max_connections: $cap }#" "$tmp/splitgate.yaml"
  grep -q "max_connections: $cap" "$tmp/splitgate.yaml" || die "could not set the splitgate listener's max_connections"
  notes+=("splitgate: hard descriptor limit $hard: derived cap ($fds - 256) / 2 = $derived < $cap, so the listener gets limits: { max_connections: $cap } in the temporary copy")
fi

# ---- the client ------------------------------------------------------------------------------
cat > "$tmp/idle_clients.py" <<'PY'
"""warm PORT HOST REQUESTS CONNS | hold PORT HOST CONNS PARALLEL TIMEOUT (see idle-memory.sh)."""
import asyncio, resource, socket, struct, sys, time


def raise_nofile(want):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < want:
        sys.exit(f"client: RLIMIT_NOFILE is {soft} (hard {hard}), need {want}")


async def exchange(reader, writer, request):
    """Send one request, read its whole answer; the body, or an exception."""
    writer.write(request)
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length, chunked, close = None, False, False
    for line in head[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and "close" in value:
            close = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                break
            body += (await reader.readexactly(size + 2))[:-2]
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        raise ValueError("answer without a length (read to close)")
    if status != 200:
        raise ValueError(f"status {status}")
    if close:
        raise ValueError("the proxy answered Connection: close")
    if not (body.startswith(b"stable") or body.startswith(b"canary")):
        raise ValueError(f"unexpected body {body[:40]!r}")
    return body


def request(host):
    return f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


async def warm(port, host, total, n):
    raise_nofile(n + 64)
    req, tally = request(host), {"ok": 0, "failed": 0, "stable": 0, "canary": 0}
    err = [""]

    async def worker(count):
        w = None
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(count):
                body = await asyncio.wait_for(exchange(r, w, req), 10)
                tally["ok"] += 1
                tally["stable" if body.startswith(b"stable") else "canary"] += 1
        except Exception as e:  # noqa: BLE001 - reported, not raised
            tally["failed"] += 1
            err[0] = err[0] or f"{type(e).__name__}: {e}"
        finally:
            if w is not None:
                w.close()

    await asyncio.gather(*(worker(total // n + (i < total % n)) for i in range(n)))
    print("WARM " + " ".join(f"{k}={v}" for k, v in tally.items()) + f" err={err[0]!r}", flush=True)


async def hold(port, host, n, parallel, timeout):
    raise_nofile(n + 256)
    req, held, sem = request(host), [], asyncio.Semaphore(parallel)
    failed, err = 0, ""

    async def one():
        nonlocal failed, err
        async with sem:
            w = None
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
                await asyncio.wait_for(exchange(r, w, req), timeout)
                held.append((r, w))
            except Exception as e:  # noqa: BLE001 - reported, not raised
                failed += 1
                err = err or f"{type(e).__name__}: {e}"
                if w is not None:
                    w.transport.abort()

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    print(f"OPEN ok={len(held)} failed={failed} secs={time.monotonic() - t0:.2f} err={err!r}", flush=True)
    # Idle until the script has read the proxy's RSS and says so on stdin.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    closed = sum(1 for r, w in held if r.at_eof() or w.transport.is_closing())
    print(f"CLOSED {closed}", flush=True)
    for _, w in held:  # reset, leaving no TIME_WAIT behind for the next proxy
        try:
            w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        w.transport.abort()
    await asyncio.sleep(0)


if __name__ == "__main__":
    mode, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "warm":
        asyncio.run(warm(port, host, int(sys.argv[4]), int(sys.argv[5])))
    else:
        asyncio.run(hold(port, host, int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])))
PY
client=$tmp/idle_clients.py

# ---- the upstreams (shared, CPU 1, as in peer-cpu.sh) --------------------------------------------
taskset -c 1 nginx -c "$tmp/upstreams.conf" > "$tmp/upstreams.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do
  [ "$(curl -s --max-time 1 http://127.0.0.1:19001/)" = "stable v1" ] && [ "$(curl -s --max-time 1 http://127.0.0.1:19002/)" = "canary v2" ] && break
  sleep 0.1
done
[ "$(curl -s --max-time 1 http://127.0.0.1:19002/)" = "canary v2" ] || die "the upstream nginx did not answer on 19001/19002: $(tail -n 3 "$tmp/upstreams.log" "$tmp"/upstreams*error* 2>/dev/null)"

# ---- one proxy -------------------------------------------------------------------------------
pid="" port=""
start() { # name -> pid, port; 1 when it does not answer 200 within 10 s
  case $1 in
    splitgate) port=18080; taskset -c 0 "$bin" run -c "$tmp/splitgate.yaml" --log-level warn > "$tmp/sg.log" 2>&1 & pid=$! ;;
    haproxy)   port=18082; taskset -c 0 haproxy -f "$tmp/haproxy.cfg" -db > "$tmp/haproxy.log" 2>&1 & pid=$! ;;
    nginx)     port=18081; taskset -c 0 nginx -c "$tmp/nginx-proxy.conf" > "$tmp/nginx.log" 2>&1 & pid=$! ;;
  esac
  pids+=($pid)
  for _ in $(seq 100); do
    alive $pid || return 1
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 -H "Host: $host" "http://127.0.0.1:$port/")" = 200 ] && return 0
    sleep 0.1
  done
  return 1
}
log_of() { case $1 in splitgate) echo "$tmp/sg.log" ;; haproxy) echo "$tmp/haproxy.log" ;; nginx) echo "$tmp/nginx.log $tmp/proxy-error.log" ;; esac; }
rss() { # pid -> VmRSS in KiB summed over its process tree
  local p; for p in $(tree "$1"); do cat "/proc/$p/status" 2>/dev/null; done | awk '$1 == "VmRSS:" { s += $2 } END { print s + 0 }'
}
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

echo "idle-memory.sh: $conns idle keep-alive connections per proxy, held ${hold}s; proxy on CPU 0, client + upstream nginx on CPU 1"
versions="nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')"
command -v haproxy >/dev/null && versions+=", haproxy $(haproxy -v 2>/dev/null | awk 'NR == 1 { print $3 }')"
for n in "${names[@]}"; do [ "$n" = splitgate ] && versions+=", $("$bin" --version 2>/dev/null) ($bin, built $(date -r "$bin" '+%F %T'))"; done
echo "idle-memory.sh: $versions; ulimit -n $fds (hard $hard)"
for note in "${notes[@]}"; do [[ " ${names[*]} " == *" ${note%%:*} "* ]] && echo "idle-memory.sh: cap lifted: $note"; done
echo
fmt="%-10s %14s %14s %12s %13s  %s\n"
# shellcheck disable=SC2059
printf "$fmt" proxy rss_before_kib rss_idle_kib kib_per_conn open notes
status=0
for name in "${names[@]}"; do
  if ! start "$name"; then
    printf "%-10s FAILED: did not answer 200 on :%s within 10 s: %s\n" "$name" "$port" "$(cat $(log_of "$name") 2>/dev/null | tail -n 3 | tr '\n' ' ' | cut -c1-300)"
    stop_tree "$pid"; status=1; continue
  fi
  w=$(taskset -c 1 python3 "$client" warm "$port" "$host" "$warm" 16 2>&1 | tail -n 1)
  pause 1                                          # let the warm-up connections close
  before=$(rss "$pid")
  coproc CLIENT { exec taskset -c 1 python3 "$client" hold "$port" "$host" "$conns" 64 10 2>"$tmp/client.err"; }
  cpid=$CLIENT_PID; pids+=($cpid)
  line=""; read -r -t 600 line <&"${CLIENT[0]}"
  opened=$(sed -n 's/^OPEN ok=\([0-9]*\).*/\1/p' <<<"$line")
  if [ -z "$opened" ]; then
    printf "%-10s FAILED: the client gave no result: %s\n" "$name" "$(tail -n 2 "$tmp/client.err" | tr '\n' ' ' | cut -c1-300)"
    stop_tree "$cpid"; stop_tree "$pid"; status=1; continue
  fi
  pause "$hold"
  idle=$(rss "$pid")
  open=$(established "$port")
  echo check >&"${CLIENT[1]}"
  closed=""; read -r -t 60 closed <&"${CLIENT[0]}"
  wait "$cpid" 2>/dev/null; stop_tree "$cpid"
  alive "$pid" && up=1 || up=0
  stop_tree "$pid"
  failed=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line") secs=$(sed -n 's/.* secs=\([0-9.]*\).*/\1/p' <<<"$line")
  err=$(sed -n "s/.* err=\(.*\)$/\1/p" <<<"$line")
  note="set-up ${secs}s; warm-up: $(sed 's/^WARM //; s/ err=.*//' <<<"$w")"
  [ "$failed" != 0 ] && note+="; $failed failed to set up: $err"
  [ "${closed#CLOSED }" != 0 ] && note+="; closed by the proxy while idle: ${closed#CLOSED }"
  [ $up = 0 ] && note+="; the proxy had exited by the end"
  [ "$opened" = "$conns" ] && [ "$open" = "$conns" ] && [ "${closed#CLOSED }" = 0 ] && [ $up = 1 ] || { status=1; note="NOT ALL OPEN, the figure is unreliable; $note"; }
  per=$(awk -v a="$before" -v b="$idle" -v n="$opened" 'BEGIN { if (n > 0) printf "%.2f", (b - a) / n; else print "-" }')
  # shellcheck disable=SC2059
  printf "$fmt" "$name" "$before" "$idle" "$per" "$open/$conns" "$note"
done
exit $status
