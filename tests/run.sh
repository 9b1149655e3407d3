#!/usr/bin/env bash
# Runs every test of splitgate: formatting, lints, unit and integration tests.
# Installs what the tests need when it is missing (Debian/Ubuntu, as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null || need+=(curl)
# The metrics end-to-end test scrapes the gateway with a real Prometheus.
command -v prometheus >/dev/null || need+=(prometheus)
# The fake Kubernetes API server (tests/common/fake_kube.rs) is checked against a real kubectl.
command -v kubectl >/dev/null || need+=(kubernetes-client)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing test dependencies: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
# Then every fuzz target for FUZZ_SECONDS each (tests/fuzz.sh; 0 skips it).
fuzz_seconds="${FUZZ_SECONDS:-60}"
if [ "$fuzz_seconds" != "0" ]; then
  tests/fuzz.sh "$fuzz_seconds"
fi
