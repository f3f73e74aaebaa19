#!/usr/bin/env bash
# Installs the Debian packages the test suite needs when they are missing.
set -euo pipefail
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v setsid >/dev/null 2>&1 || need+=(util-linux)
# network partition tests use namespaces and veth pairs; script tests run /usr/bin/python3
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need+=(iproute2)
[ -x /usr/bin/python3 ] || need+=(python3)
# become tests run commands through a real sudo (non-root agents, agentless hosts)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
# The console's browser tests drive Debian's Chromium through Playwright (no `playwright install`).
[ -x /usr/bin/chromium ] || need+=(chromium)
# The PostgreSQL tests start their own cluster with initdb and pg_ctl (PATH or Debian's dirs).
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null ||
    need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${need[*]} (run as root or install them)" >&2
        exit 1
    fi
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || true
    apt-get install -y -q "${need[@]}" >/dev/null
fi
# initdb refuses root: as root, the test cluster belongs to the postgres system user.
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    echo "adding system user postgres"
    useradd --system --home-dir /var/lib/postgresql --shell /usr/sbin/nologin postgres
fi
