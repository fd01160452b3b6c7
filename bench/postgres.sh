#!/usr/bin/env bash
# bench/postgres.sh: accept and drain rates of backupmx on the postgres engine (issue 4),
# with the load and sinks of bench/run.sh (Postfix's smtp-source and smtp-sink), on loopback.
# A throwaway PostgreSQL is initdb'd into the temp dir (fsync on, synchronous_commit on)
# from the local installation, as the user postgres when run as root.
#
# Needs: go, PostgreSQL (initdb, postgres), smtp-source, smtp-sink, curl, jq.
# Knobs (environment): N1 N10 N50 (10 KB messages at 1/10/50 sessions), DRAIN (messages
# queued for the drain test), NODES (1 or 2: accept through 1 or 2 nodes on the one
# database; drain by all of them), PORT_BASE, KEEP=1, BENCH_TMP, BENCH_WORKTREE=1.
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-1000}
N10=${N10:-3000}
N50=${N50:-3000}
DRAIN=${DRAIN:-5000}
NODES=${NODES:-1}
PORT_BASE=${PORT_BASE:-12640}
DOMAIN=example.test
DNS_DEAD=127.0.0.1:$((PORT_BASE + 0))
PG_PORT=$((PORT_BASE + 1))
SINK=127.0.0.1:$((PORT_BASE + 2))
# node i (0-based): SMTP on PORT_BASE+10+2i, admin on PORT_BASE+11+2i
smtp_addr() { echo "127.0.0.1:$((PORT_BASE + 10 + 2 * $1))"; }
admin_addr() { echo "127.0.0.1:$((PORT_BASE + 11 + 2 * $1))"; }

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -n "$PGBIN" ] || PGBIN=$(dirname "$(command -v initdb)")

T=$(mktemp -d "${BENCH_TMP:-/tmp}/backupmx-pgbench.XXXXXX")
chmod 755 "$T"
PIDS=()
SINK_PID=""
PG_UP=0
asuser() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

cleanup() {
	set +e
	[ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	[ "$PG_UP" = 1 ] && asuser "$PGBIN/pg_ctl" -D "$T/pg" -m fast -w stop >/dev/null 2>&1
	if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. bench/lib.sh # now, elapsed, rate, log

log "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); PostgreSQL from $PGBIN"

# ---------- PostgreSQL ----------
mkdir -p "$T/pg"
[ "$(id -u)" = 0 ] && chown postgres "$T/pg"
chmod 700 "$T/pg"
asuser "$PGBIN/initdb" -D "$T/pg" -U postgres -A trust -E UTF8 --locale=C >/dev/null
asuser "$PGBIN/pg_ctl" -D "$T/pg" -l "$T/pg/pg.log" -w start \
	-o "-p $PG_PORT -k $T/pg -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c max_connections=200" >/dev/null
PG_UP=1
DSN="postgres://postgres@127.0.0.1:$PG_PORT/postgres?sslmode=disable"

# ---------- backupmx ----------
if [ "${BENCH_WORKTREE:-0}" = 1 ]; then
	go build -o "$T/backupmx" ./cmd/backupmx
else
	log "building backupmx from $(git rev-parse --short HEAD)"
	mkdir -p "$T/src" && git archive HEAD | tar -x -C "$T/src"
	(cd "$T/src" && go build -o "$T/backupmx" ./cmd/backupmx)
fi

# nodes_start PROBE: NODES nodes on the database, primary = $SINK.
nodes_start() {
	PIDS=()
	for i in $(seq 0 $((NODES - 1))); do
		bmx_config "mx$i.bench.test" "$(smtp_addr "$i")" "$(admin_addr "$i")" "$SINK" \
			"engine = \"postgres\"
dsn = \"$DSN\"" "probe_interval = \"$1\"" "node = \"node$i\"" >"$T/node$i.toml"
		"$T/backupmx" serve -config "$T/node$i.toml" 2>>"$T/node$i.log" &
		PIDS+=($!)
		for _ in $(seq 100); do
			curl -fsS "http://$(admin_addr "$i")/v1/health" >/dev/null 2>&1 && break
			sleep 0.1
		done
	done
}
nodes_stop() {
	for p in "${PIDS[@]}"; do kill "$p"; wait "$p" || true; done
	PIDS=()
}
queue_empty() { curl -fsS "http://$(admin_addr 0)/v1/queue?limit=1" | grep -q '"items":\[\]'; }
queue_count() {
	local n=0 after="" page
	while :; do
		page=$(curl -fsS -G "http://$(admin_addr 0)/v1/queue" --data-urlencode limit=1000 --data-urlencode "after=$after")
		n=$((n + $(jq '.items | length' <<<"$page")))
		after=$(jq -r '.next' <<<"$page")
		[ -n "$after" ] || break
	done
	echo "$n"
}
db_reset() { asuser "$PGBIN/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "TRUNCATE messages, body_chunks, deliveries, leases" postgres >/dev/null; }

# source SESSIONS MSGS SIZE: split over the nodes, in parallel; prints wall seconds.
source_run() {
	local t0 t1 pids=() per=$(($2 / NODES)) s=$(($1 / NODES))
	[ "$s" -ge 1 ] || s=1
	t0=$(now)
	for i in $(seq 0 $((NODES - 1))); do
		/usr/sbin/smtp-source -s "$s" -m "$per" -l "$3" -M client.bench.test \
			-f sender@src.bench.test -t "rcpt@$DOMAIN" "$(smtp_addr "$i")" >"$T/source$i.out" 2>&1 &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || { cat "$T"/source*.out >&2; exit 1; }; done
	t1=$(now)
	elapsed "$t0" "$t1"
}

log "phase 1: accept through $NODES node(s), primary down"
nodes_start 1h
TOTAL=0
for spec in "1 $N1" "10 $N10" "50 $N50"; do
	set -- $spec
	secs=$(source_run "$1" "$2" 10240)
	TOTAL=$((TOTAL + $2))
	log "postgres accept: $2 × 10 KB, $1 sessions: ${secs}s → $(rate "$2" "$secs") msg/s"
done
n=$(queue_count)
log "queue after accept: $n deliveries (expected $TOTAL)"
[ "$n" = "$TOTAL" ] || { echo "queue count mismatch" >&2; exit 1; }
nodes_stop
db_reset

log "phase 2: drain of $DRAIN on 'queue flush' (probe_interval 1h)"
nodes_start 1h
secs=$(source_run 10 "$DRAIN" 10240)
log "postgres accept $DRAIN × 10 KB, 10 sessions: ${secs}s → $(rate "$DRAIN" "$secs") msg/s"
sleep 2
/usr/sbin/smtp-sink -u nobody -c "$SINK" 1024 >"$T/sink.out" &
SINK_PID=$!
sleep 0.5
t0=$(now)
"$T/backupmx" queue flush -config "$T/node0.toml" >/dev/null
while ! queue_empty; do sleep 0.1; done
t1=$(now)
secs=$(elapsed "$t0" "$t1")
got=$(tr '\r' '\n' <"$T/sink.out" | tail -1 | sed 's/.*mesg=//')
log "postgres flush → queue empty: ${secs}s → $(rate "$DRAIN" "$secs") msg/s; sink counted $got"
nodes_stop
