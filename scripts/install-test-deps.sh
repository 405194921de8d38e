#!/usr/bin/env bash
# Installs the system tools the test suite drives for real (README "Tests"):
#   promtool       (Debian package `prometheus`)  - `promtool test rules` on k8s/alerts.rules.yml
#   chromium       + chromium-driver               - the web page's end-to-end browser test
#   redis-server                                   - real Redis for the bank and job-store tests
# Idempotent: only what is missing is installed, and `apt-get update` runs only when something
# is. Never fails the build: when it cannot install (not root, no apt), it says why and exits 0;
# the tests that need a missing tool then skip with a reason.
set -u

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-deps: apt-get not available; not installing ${need[*]} (tests needing them will skip)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: not root; not installing ${need[*]} (run: sudo $0) - tests needing them will skip"
    exit 0
fi

echo "install-test-deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# --no-install-recommends keeps `prometheus` from pulling the node exporter and friends.
log=$(mktemp -t install-test-deps.XXXXXX.log)
if { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1; then
    echo "install-test-deps: installed ${need[*]}"
    rm -f "$log"
else
    echo "install-test-deps: apt-get failed (log: $log); tests needing ${need[*]} will skip"
fi
# The `prometheus` package enables a Prometheus server under systemd. Tests only need promtool;
# a CI machine should not keep a server listening on :9090.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
exit 0
