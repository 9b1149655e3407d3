#!/usr/bin/env bash
# Fuzzes splitgate for SECONDS per target (default 60): the config loader (config_load), the
# router (route_match), the header rules and the upstream side's HTTP/1 parsing (request_head),
# the listener's own HTTP/1.1 server: its request head parser (h1_head) and its chunked
# request body decoder (h1_chunked), and its own HTTP/2 server: the HPACK codec (hpack) and
# whole connections (h2_server). Installs cargo-fuzz when it is missing. Runs every target,
# then fails if any crashed, naming the target and the file that holds the crashing input.
#   tests/fuzz.sh 600                                         # ten minutes per target
#   RUSTC_BOOTSTRAP=1 cargo fuzz run route_match -- -max_total_time=3600   # one target, longer
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
targets=(config_load route_match request_head h1_head h1_chunked hpack h2_server)

# cargo fuzz passes nightly-only flags (sanitizers, coverage); this lets stable rustc take them.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cargo fuzz build

failed=()
for t in "${targets[@]}"; do
  # New inputs go to work/ (ignored by git); the checked-in seeds in corpus/ are only read.
  work="fuzz/work/$t"
  log="fuzz/work/$t.log"
  mkdir -p "$work"
  echo "fuzzing $t for ${seconds}s"
  if cargo fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "$t: ok, $execs executions"
  else
    failed+=("$t")
    echo "FAILED: fuzz target $t crashed; what it said (the whole log: $log):"
    grep -E -A3 "panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|out-of-memory|timeout after" "$log" | head -n 40 || tail -n 40 "$log"
    input=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | sed 's/Test unit written to //')
    if [ -n "$input" ]; then
      echo "FAILED: $t: the crashing input is saved in $input"
      echo "        reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $input"
    else
      echo "FAILED: $t: no crashing input was saved (see $log)"
    fi
  fi
done

echo "fuzz: $(( ${#targets[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}"
  exit 1
fi
