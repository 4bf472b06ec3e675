#!/usr/bin/env bash
# Debian's Prometheus (and promtool) for the dashboard and alert tests, without Docker.
#
#   scripts/prometheus.sh install              install Debian's `prometheus` package with apt when
#                                              `prometheus` or `promtool` is missing
#   scripts/prometheus.sh run CONFIG PORT DIR  run prometheus in the foreground (exec) on
#                                              127.0.0.1:PORT with CONFIG, its data in DIR
#   scripts/prometheus.sh check                promtool check + test of prometheus/rules
#
# `run` installs first when needed. It replaces the shell (exec), so the caller's process id is
# Prometheus' own and stopping it stops Prometheus. The package's own service (on a host with
# systemd it may start on :9090) is not used or touched.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf 'prometheus: %s\n' "$*" >&2; }
die() { printf 'prometheus: error: %s\n' "$*" >&2; exit 1; }

installed() { command -v prometheus >/dev/null && command -v promtool >/dev/null; }

cmd_install() {
  if installed; then return; fi
  command -v apt-get >/dev/null || die "prometheus is missing and apt-get is not available: install Prometheus (prometheus, promtool) on the PATH"
  log "installing Debian's prometheus package with apt"
  local sudo=; [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q >/dev/null
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null \
    || die "apt-get install prometheus failed"
  installed || die "prometheus was installed but prometheus/promtool are not on the PATH"
  log "installed: $(prometheus --version 2>&1 | head -n 1)"
}

cmd_run() {
  [ $# -eq 3 ] || die "usage: $0 run CONFIG PORT DATA_DIR"
  local config=$1 port=$2 data=$3
  [ -f "$config" ] || die "no config file $config"
  cmd_install
  mkdir -p "$data"
  exec prometheus \
    --config.file="$config" \
    --storage.tsdb.path="$data" \
    --web.listen-address="127.0.0.1:$port" \
    --web.enable-lifecycle \
    --log.level=warn
}

cmd_check() {
  cmd_install
  promtool check rules "$repo"/prometheus/rules/*.yml
  promtool test rules "$repo"/prometheus/tests/*.test.yml
}

case ${1:-} in
  install) cmd_install ;;
  run) shift; cmd_run "$@" ;;
  check) cmd_check ;;
  *) echo "usage: $0 install | run CONFIG PORT DATA_DIR | check" >&2; exit 2 ;;
esac
