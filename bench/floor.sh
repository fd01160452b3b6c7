#!/usr/bin/env bash
# bench/floor.sh: the floor under backupmx's cost per message (bench/floor,
# a Go SMTP responder that does nothing) under bench/ab.sh's load: msg/s
# and its user and system CPU per message, per run. Compare with
# `bench/ab.sh` on backupmx (bench/README.md, "the floor").
#
#   bench/floor.sh [ROUNDS=3] [MESSAGES=20000] [SESSIONS=50]
#
# Loopback only (127.0.0.1:PORT, default 13201). Needs Go and smtp-source.
set -euo pipefail

ROUNDS=${1:-3} N=${2:-20000} S=${3:-50} PORT=${PORT:-13201}
cd "$(dirname "$0")/.."
. bench/lib.sh # cpu_load
T=$(mktemp -d /tmp/backupmx-floor.XXXXXX)
trap 'rm -rf "$T"' EXIT
go build -o "$T/floor" ./bench/floor

for i in $(seq "$ROUNDS"); do
	"$T/floor" "127.0.0.1:$PORT" &
	p=$!
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
		sleep 0.1
	done
	read -r r u s < <(cpu_load "$p" "127.0.0.1:$PORT" "$N" "$S")
	kill "$p"
	wait "$p" 2>/dev/null || true
	echo "round $i: $r msg/s, user $u + system $s us/msg"
done
