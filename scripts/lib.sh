#!/usr/bin/env bash
# Shared by scripts/test and scripts/sandbox: install what the real components need.
step() { printf '\n==> %s\n' "$*" >&2; }

apt_updated=
# ensure_pkg COMMAND PACKAGE...: installs Debian PACKAGEs when COMMAND is not on PATH.
# (The system servers integration tests run, PostgreSQL and PowerDNS, go through
# ensure_test_servers, which also keeps their services from starting.)
ensure_pkg() {
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing $cmd. Run this as root to install it, or: sudo apt-get install --no-install-recommends $*" >&2
    return 1
  fi
  apt_install "$@"
}

# apt_install PACKAGE...: installs Debian PACKAGEs (the caller checked they are missing).
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  step "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ensure_test_servers: installs PostgreSQL and PowerDNS (with its SQLite backend and the sqlite3
# CLI that loads the schema) for the integration tests that run real servers. The harness
# starts its own instances on 127.0.B.x and never uses the distribution's services, so those
# must not start: they would only hold 5432 and 53 and the CPU the tests need.
ensure_test_servers() {
  local missing=()
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  command -v pdns_server >/dev/null 2>&1 || missing+=(pdns-server)
  [ -f /usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql ] || missing+=(pdns-backend-sqlite3)
  command -v sqlite3 >/dev/null 2>&1 || missing+=(sqlite3)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing ${missing[*]}. Run this as root to install them, or install them yourself:" >&2
    echo "  sudo apt-get install --no-install-recommends ${missing[*]}" >&2
    echo "and keep their services stopped (drcut starts its own instances):" >&2
    echo "  sudo systemctl disable --now postgresql pdns" >&2
    return 1
  fi
  # A policy-rc.d exiting 101 tells maintainer scripts not to start services. Only add one
  # when none exists, and remove only the one added here.
  local policy=/usr/sbin/policy-rc.d added_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/test: no service starts while installing test servers.\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    added_policy=1
  fi
  local rc=0
  apt_install "${missing[@]}" || rc=$?
  [ -n "$added_policy" ] && rm -f "$policy"
  # Belt and braces for systems where the policy was not honoured (e.g. systemd units
  # enabled by the packages): stop the services and keep them from starting at boot. Only
  # the services installed just now: a PostgreSQL the machine already ran is left alone.
  local svc svcs=()
  [[ " ${missing[*]} " == *" postgresql "* ]] && svcs+=(postgresql)
  [[ " ${missing[*]} " == *" pdns-server "* ]] && svcs+=(pdns)
  for svc in "${svcs[@]}"; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    else
      service "$svc" stop >/dev/null 2>&1 || true
      update-rc.d "$svc" disable >/dev/null 2>&1 || true
    fi
  done
  return "$rc"
}

# ensure_console_browser: Debian's Chromium, Node and Playwright for the browser test of the ops
# console (t150_console drives /usr/bin/chromium through playwright-core from tests/console).
# Playwright never downloads a browser of its own: the packaged one is the one tested.
ensure_console_browser() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
      echo "missing ${missing[*]}. Run this as root to install them, or: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
      return 1
    fi
    apt_install "${missing[@]}"
  fi
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tests/console" && pwd)"
  # npm ci when nothing is installed yet, or the lock file changed since.
  if [ ! -d "$dir/node_modules/playwright-core" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    step "npm ci in tests/console (playwright-core, no browser download)"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
  fi
}

# ensure_build_tools: the C toolchain cargo needs to link and to build ring (rustup installs
# Rust, not a linker).
ensure_build_tools() {
  command -v cc >/dev/null 2>&1 || ensure_pkg_always gcc libc6-dev
}

# ensure_manifest_validator: kubernetes-validate (PyPI; schema validation of deploy/kubernetes)
# in a virtualenv under target/tools, pinned, so the system Python is left alone.
kube_validator_version=1.37.0
ensure_manifest_validator() {
  local venv="$PWD/target/tools/kube-validate"
  if [ -x "$venv/bin/kubernetes-validate" ] \
    && [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$kube_validator_version" ]; then
    return 0
  fi
  python3 -c 'import venv, ensurepip' 2>/dev/null || ensure_pkg_always python3-venv || return 1
  step "installing kubernetes-validate $kube_validator_version (PyPI) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kube_validator_version"
}

# ensure_pkg_always PACKAGE...: installs Debian PACKAGEs (no command to test for).
ensure_pkg_always() {
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing $*. Run this as root to install it, or: sudo apt-get install --no-install-recommends $*" >&2
    return 1
  fi
  apt_install "$@"
}

# ensure_nextest: succeeds when `cargo nextest` is usable, installing it if needed.
ensure_nextest() {
  cargo nextest --version >/dev/null 2>&1 && return 0
  step "installing cargo-nextest"
  cargo install cargo-nextest --locked
}
