#!/usr/bin/env bash
# Make sure a Docker engine answers and busybox-static (for the test and example images) is
# installed: installs Debian's docker.io and busybox-static if missing (as root), and starts
# dockerd in the background if nothing answers. Used by `make test`, `make demo` and CI.
set -euo pipefail

say() { echo "ensure-docker: $*" >&2; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing packages: ${missing[*]}; install them (sudo apt-get install -y ${missing[*]}) and retry"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1 || python3 - <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
s.connect("/var/run/docker.sock")
s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
sys.exit(0 if b"OK" in s.recv(1024) else 1)
PY
then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  say "no Docker engine answers on /var/run/docker.sock; start it (sudo systemctl start docker) and retry"
  exit 1
fi
log=/var/log/broadway-dockerd.log
say "starting dockerd (log: $log)"
setsid nohup dockerd >"$log" 2>&1 < /dev/null &
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    say "Docker engine is up"
    exit 0
  fi
  sleep 0.5
done
say "dockerd did not come up within 60s; last lines of $log:"
tail -n 20 "$log" >&2 || true
exit 1
