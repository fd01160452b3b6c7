#!/usr/bin/env bash
# bench/ab.sh: two backupmx binaries, taking turns under the same smtp-source
# load, primary down: msg/s and backupmx's CPU per message (utime+stime from
# /proc/PID/stat), per run and as medians. For A/B-testing a change to the
# accept path on a noisy machine (bench/README.md).
#
#   go build -o /tmp/bmx-a ./cmd/backupmx   # before the change
#   go build -o /tmp/bmx-b ./cmd/backupmx   # after
#   bench/ab.sh /tmp/bmx-a /tmp/bmx-b [ROUNDS=6] [MESSAGES=10000] [SESSIONS=50]
#
# Each run gets a fresh embedded store in a temp dir; everything is on
# loopback (ports PORT_BASE…PORT_BASE+3, default 13000…13003; the DNS
# resolver and the primary are ports where nothing listens). Needs
# smtp-source (Postfix) and curl.
set -euo pipefail

A=$(realpath "$1") B=$(realpath "$2") ROUNDS=${3:-6} N=${4:-10000} S=${5:-50}
PORT_BASE=${PORT_BASE:-13000}
cd "$(dirname "$0")/.."
. bench/lib.sh # bmx_config, cpu_load
DOMAIN=example.test
DNS_DEAD=127.0.0.1:$PORT_BASE # nothing listens: every DNS query fails at once
T=$(mktemp -d /tmp/backupmx-ab.XXXXXX)
trap 'rm -rf "$T"' EXIT

run() { # run BINARY: prints "msg/s cpu-us-per-message"
	local d p r u s
	d=$(mktemp -d "$T/run.XXXX")
	bmx_config mx-backup.bench.test "127.0.0.1:$((PORT_BASE + 1))" "127.0.0.1:$((PORT_BASE + 2))" \
		"127.0.0.1:$((PORT_BASE + 3))" "dir = \"$d/store\"" "" >"$d/c.toml"
	"$1" serve -config "$d/c.toml" 2>"$d/log" &
	p=$!
	for _ in $(seq 100); do
		curl -fsS "http://127.0.0.1:$((PORT_BASE + 2))/v1/health" >/dev/null 2>&1 && break
		sleep 0.1
	done
	read -r r u s < <(cpu_load "$p" "127.0.0.1:$((PORT_BASE + 1))" "$N" "$S")
	kill "$p"
	wait "$p" || true
	rm -rf "$d"
	echo "$r $((u + s))"
}

median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2))}'; }

ra="" rb="" ca="" cb=""
for i in $(seq "$ROUNDS"); do
	read -r r c < <(run "$A")
	ra+=" $r" ca+=" $c"
	echo "round $i: A $r msg/s, $c us/msg"
	read -r r c < <(run "$B")
	rb+=" $r" cb+=" $c"
	echo "round $i: B $r msg/s, $c us/msg"
done
echo "A $A: msg/s$ra (median $(echo "$ra" | median)); CPU us/msg$ca (median $(echo "$ca" | median))"
echo "B $B: msg/s$rb (median $(echo "$rb" | median)); CPU us/msg$cb (median $(echo "$cb" | median))"
