#!/usr/bin/env bash
# bench/scale/run.sh: the server with a large queue (issue 6 item 2). Starts the
# real backupmx on a store that `scale fill` prepared (or an empty one), with all
# 10,000 domains' primary down (a closed loopback port), and measures: RSS after
# start, CPU over an idle minute, time to the first page of `queue list` (all
# domains and one domain), time of `queue flush DOMAIN`, the accept rate with
# smtp-source, and RSS after it. Everything stays on loopback.
#
#	bench/scale/run.sh STORE_DIR [LABEL]
#
# Knobs (environment): ACCEPT (messages, default 5000), SESSIONS (10), SIZE
# (bytes, 10240), IDLE (seconds of idle CPU sampling, 60), DOMAINS (10000),
# PORT_BASE (12600), PERF=1 (perf record the accept run into STORE_DIR/../).
set -euo pipefail
cd "$(dirname "$0")/../.."

STORE=${1:?usage: run.sh STORE_DIR [LABEL]}
LABEL=${2:-$(basename "$STORE")}
ACCEPT=${ACCEPT:-5000}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-10240}
IDLE=${IDLE:-60}
DOMAINS=${DOMAINS:-10000}
PORT_BASE=${PORT_BASE:-12600}
SMTP=127.0.0.1:$((PORT_BASE + 1))
ADMIN=127.0.0.1:$((PORT_BASE + 2))
PRIMARY=127.0.0.1:$((PORT_BASE + 3)) # nothing listens: every primary is down

B=$(mktemp -d /tmp/backupmx-scale.XXXXXX)
PID=""
cleanup() {
	[ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
	rm -rf "$B"
}
trap cleanup EXIT

go build -o "$B/backupmx" ./cmd/backupmx
go build -o "$B/scale" ./bench/scale
"$B/scale" config -dir "$STORE" -domains "$DOMAINS" -smtp "$SMTP" -admin "$ADMIN" -primary "$PRIMARY" >"$B/backupmx.toml"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rss() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MB  ", $1, $2 / 1024 }' "/proc/$PID/status"; }
cpu() { awk '{ print $14 + $15 }' "/proc/$PID/stat"; } # utime+stime, clock ticks
out() { printf '%-8s %-28s %s\n' "$LABEL" "$1" "$2"; }

t0=$(now)
"$B/backupmx" serve -config "$B/backupmx.toml" 2>"$B/server.log" &
PID=$!
until (exec 3<>"/dev/tcp/${SMTP%:*}/${SMTP#*:}") 2>/dev/null; do
	kill -0 "$PID" || { cat "$B/server.log"; exit 1; }
	sleep 0.05
done
out "start to listening" "$(secs "$t0" "$(now)") s"
sleep 5
out "rss after start" "$(rss)"

tick=$(getconf CLK_TCK)
c0=$(cpu)
sleep "$IDLE"
c1=$(cpu)
out "idle cpu" "$(awk -v a="$c0" -v b="$c1" -v t="$tick" -v s="$IDLE" 'BEGIN { printf "%.2f s over %d s (%.1f%% of a core)", (b - a) / t, s, 100 * (b - a) / t / s }')"

q() { "$B/backupmx" queue "$@" -config "$B/backupmx.toml"; }
t=$(now); { q list -json || true; } | head -n 1 >/dev/null; out "queue list: first page" "$(secs "$t" "$(now)") s"
t=$(now); { q list -json -domain d04242.test || true; } | head -n 1 >/dev/null; out "queue list -domain: first" "$(secs "$t" "$(now)") s"
t=$(now); r=$(q flush d04242.test); out "queue flush d04242.test" "$(secs "$t" "$(now)") s ($r)"

if [ "${PERF:-0}" = 1 ]; then
	perf record -F 499 -g -p "$PID" -o "$STORE/../perf-accept-$LABEL.data" 2>/dev/null &
	PERF_PID=$!
fi
t=$(now)
smtp-source -c -s "$SESSIONS" -m "$ACCEPT" -l "$SIZE" -f sender@example.test -t user@d00001.test "$SMTP" >/dev/null
el=$(secs "$t" "$(now)")
if [ -n "${PERF_PID:-}" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
out "accept" "$ACCEPT msgs in $el s = $(awk -v n="$ACCEPT" -v s="$el" 'BEGIN { printf "%.0f", n / s }') msgs/s ($SESSIONS sessions, $SIZE B)"
out "rss after accept" "$(rss)"
if grep -q 'level=ERROR' "$B/server.log"; then
	echo "server errors:" >&2
	grep 'level=ERROR' "$B/server.log" | head >&2
fi
