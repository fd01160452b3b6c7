#!/usr/bin/env bash
# bench/run.sh: accept and drain rates of backupmx and of Postfix configured as a
# backup MX, side by side in one run, everything on loopback (issue 2, issue 6 item 1).
#
# Needs: go, Postfix (postfix, postqueue, postsuper, smtp-source, smtp-sink), curl, jq;
# run as root (Postfix's master must start as root). The package's default Postfix
# instance is never touched: ours lives in its own config/queue directory in a temp dir.
#
# Knobs (environment): N1 N10 N50 (10 KB messages at 1/10/50 sessions), NBIG (100 KB
# at 10 sessions), REPEAT (runs of each accept load per server, default 3; the median
# is reported), DRAIN (messages queued for the drain tests), PORT_BASE, KEEP=1 (keep
# the temp dir), SKIP_POSTFIX=1, BENCH_TMP (parent of the temp dir), PROFILE=1 (perf
# record backupmx during the 10-session accept and the flush drain; summaries printed
# by bench/perf-summary.py, perf.data files kept in bench/out/), FLOOR=0 (leave out
# bench/floor, the bare Go responder that takes a turn in the 50-session load as a
# gauge of the machine's speed at that moment). CPU µs per message per server comes from
# cgroup v1 cpuacct where writable (bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-2000}
N10=${N10:-5000}
N50=${N50:-30000} # ~6 s for backupmx: 10,000 (~2 s) left its runs to the VM's hiccups
NBIG=${NBIG:-2000}
DRAIN=${DRAIN:-20000}
REPEAT=${REPEAT:-3}
PORT_BASE=${PORT_BASE:-12540}
SKIP_POSTFIX=${SKIP_POSTFIX:-0}

DNS_DEAD=127.0.0.1:$((PORT_BASE + 0)) # nothing listens: any DNS query fails at once, on loopback
BMX_SMTP=127.0.0.1:$((PORT_BASE + 1))
BMX_ADMIN=127.0.0.1:$((PORT_BASE + 2))
BMX_SINK=127.0.0.1:$((PORT_BASE + 3)) # backupmx's primary
PF_SMTP=127.0.0.1:$((PORT_BASE + 4))
PF_SINK=127.0.0.1:$((PORT_BASE + 5)) # Postfix's primary
FLOOR_SMTP=127.0.0.1:$((PORT_BASE + 6)) # bench/floor
FLOOR=${FLOOR:-1}
DOMAIN=example.test
PROBE_DEFAULT=10s # queue.probe_interval's default (internal/config)

for p in $(seq "$PORT_BASE" $((PORT_BASE + 6))); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
		echo "port 127.0.0.1:$p is in use; set PORT_BASE" >&2
		exit 1
	fi
done

T=$(mktemp -d "${BENCH_TMP:-/tmp}/backupmx-bench.XXXXXX")
chmod 755 "$T" # Postfix's daemons run as the postfix user and must reach their dirs
RESULTS=$T/results.tsv
: >"$RESULTS"
BMX_PID=""
SINK_PID=""
SAMPLER_PID=""
FLOOR_PID=""
PF_ETC=$T/postfix/etc
PF_SPOOL=$T/postfix/spool
PF_STARTED=0

cleanup() {
	set +e
	[ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
	[ -n "$PERF_PID" ] && kill -INT "$PERF_PID" 2>/dev/null
	[ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null
	[ -n "$FLOOR_PID" ] && kill "$FLOOR_PID" 2>/dev/null
	[ -n "$BMX_PID" ] && kill "$BMX_PID" 2>/dev/null && wait "$BMX_PID" 2>/dev/null
	if [ "$PF_STARTED" = 1 ]; then
		postfix -c "$PF_ETC" stop >/dev/null 2>&1
		# postfix stop returns before master is gone; wait for it.
		for _ in $(seq 50); do
			[ -s "$PF_SPOOL/pid/master.pid" ] || break
			kill -0 "$(tr -d ' ' <"$PF_SPOOL/pid/master.pid")" 2>/dev/null || break
			sleep 0.1
		done
	fi
	[ -n "${CG:-}" ] && rmdir "$CG"/backupmx "$CG"/postfix "$CG"/floor "$CG" 2>/dev/null
	if [ "${KEEP:-0}" = 1 ]; then echo "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

. bench/lib.sh # now, elapsed, rate, log
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; } # test, server, value

# CPU per message: backupmx, Postfix (master and every process it forks) and bench/floor
# each start in a cgroup of their own (v1 cpuacct, where this machine has it writable),
# whose cpuacct.usage (ns) is read around each accept run. Without it, no CPU figures.
CG=""
if [ -w /sys/fs/cgroup/cpuacct ] && mkdir "/sys/fs/cgroup/cpuacct/backupmx-bench.$$" 2>/dev/null; then
	CG=/sys/fs/cgroup/cpuacct/backupmx-bench.$$
	mkdir "$CG/backupmx" "$CG/postfix" "$CG/floor"
fi
cg_enter() { [ -z "$CG" ] || echo "$BASHPID" >"$CG/$1/tasks"; } # cg_enter NAME: this (sub)shell into NAME's group
cg_usage() { if [ -n "$CG" ]; then cat "$CG/$1/cpuacct.usage"; else echo 0; fi; }

# ---------- machine ----------

log "machine: $(nproc) cores, $(awk '/MemTotal/ {print int($2/1024) " MB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg)"
# fsync rate of the filesystem the stores live on: 10 KB writes, each made durable (O_DSYNC).
dd_out=$(dd if=/dev/zero of="$T/fsync.dat" bs=10240 count=2000 oflag=dsync 2>&1 | tail -1)
dd_secs=$(awk '{for (i = 1; i <= NF; i++) if ($i == "s,") print $(i-1)}' <<<"$dd_out")
FSYNC_RATE=$(rate 2000 "$dd_secs")
rm -f "$T/fsync.dat"
log "fsync rate (dd bs=10240 count=2000 oflag=dsync): $FSYNC_RATE writes/s"
record "fsync (dd oflag=dsync, 10 KB)" machine "$FSYNC_RATE"

# ---------- backupmx ----------

# Build the committed code (HEAD), not the working tree: other engineers edit the tree
# while this runs. BENCH_WORKTREE=1 builds the working tree instead.
if [ "${BENCH_WORKTREE:-0}" = 1 ]; then
	log "building backupmx from the working tree"
	go build -o "$T/backupmx" ./cmd/backupmx
	go build -o "$T/floor" ./bench/floor
else
	log "building backupmx from $(git rev-parse --short HEAD) (git archive HEAD)"
	mkdir -p "$T/src"
	git archive HEAD | tar -x -C "$T/src"
	(cd "$T/src" && go build -o "$T/backupmx" ./cmd/backupmx && go build -o "$T/floor" ./bench/floor)
fi

# bmx_start NAME PROBE: a fresh store in $T/NAME, primary = $BMX_SINK (down until a sink starts);
# PROBE "default" leaves queue.probe_interval at its default.
bmx_start() {
	local dir=$T/$1 probe="probe_interval = \"$2\""
	[ "$2" = default ] && probe="# probe_interval: the default"
	mkdir -p "$dir"
	bmx_config mx-backup.bench.test "$BMX_SMTP" "$BMX_ADMIN" "$BMX_SINK" \
		"engine = \"embedded\"
dir = \"$dir/store\"" "$probe" >"$dir/backupmx.toml"
	BMX_CONF=$dir/backupmx.toml
	(cg_enter backupmx && exec "$T/backupmx" serve -config "$BMX_CONF" 2>"$dir/backupmx.log") &
	BMX_PID=$!
	for _ in $(seq 100); do
		curl -fsS "http://$BMX_ADMIN/v1/health" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "backupmx did not start; see $dir/backupmx.log" >&2
	exit 1
}

bmx_stop() {
	local hwm
	hwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$BMX_PID/status")
	kill "$BMX_PID"
	wait "$BMX_PID" || true
	BMX_PID=""
	echo "$hwm"
}

bmx_empty() {
	# curl and grep only: this runs every 0.1 s during the drain, on the same
	# two cores (a jq process each time cost backupmx ~20% of its drain rate).
	curl -fsS "http://$BMX_ADMIN/v1/queue?limit=1" | grep -q '"items":\[\]'
}

# bmx_count: deliveries in the queue, paging through the admin API.
bmx_count() {
	local n=0 after="" page
	while :; do
		page=$(curl -fsS -G "http://$BMX_ADMIN/v1/queue" --data-urlencode limit=1000 --data-urlencode "after=$after")
		n=$((n + $(jq '.items | length' <<<"$page")))
		after=$(jq -r '.next' <<<"$page")
		[ -n "$after" ] || break
	done
	echo "$n"
}

# ---------- Postfix ----------

pf_start() {
	mkdir -p "$PF_ETC" "$PF_SPOOL" "$T/postfix/data"
	chown postfix "$T/postfix/data"
	cat >"$PF_ETC/main.cf" <<EOF
# Postfix as a backup MX for $DOMAIN, on loopback only.
compatibility_level = 3.6
queue_directory = $PF_SPOOL
data_directory = $T/postfix/data
mail_owner = postfix
setgid_group = postdrop
myhostname = pf-backup.bench.test
mydomain = bench.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains = $DOMAIN
transport_maps = inline:{ $DOMAIN=smtp:[${PF_SINK%:*}]:${PF_SINK##*:} }
default_transport = error:bench: no route
relay_transport = error:bench: no route
local_transport = error:bench: no local delivery
alias_maps =
alias_database =
local_recipient_maps =
smtp_dns_support_level = disabled
maillog_file = $T/postfix/maillog
maillog_file_prefixes = $T/postfix
biff = no
EOF
	cat >"$PF_ETC/master.cf" <<EOF
$PF_SMTP inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
	(cg_enter postfix && postfix -c "$PF_ETC" start >/dev/null)
	PF_STARTED=1
	for _ in $(seq 100); do
		(exec 3<>"/dev/tcp/${PF_SMTP%:*}/${PF_SMTP##*:}") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "Postfix did not start; see $T/postfix/maillog" >&2
	exit 1
}

# pf_count: messages in Postfix's queue (the queue files; cheaper than postqueue -p).
pf_count() {
	find "$PF_SPOOL"/{maildrop,incoming,active,deferred,hold} -type f 2>/dev/null | wc -l
}

# pf_settle: wait (up to 120 s) until Postfix has moved everything it accepted out of
# its incoming and active queues.
pf_settle() {
	local _i
	for _i in $(seq 1200); do
		[ "$(find "$PF_SPOOL"/{maildrop,incoming,active} -type f 2>/dev/null | wc -l)" = 0 ] && return 0
		sleep 0.1
	done
	log "WARNING: Postfix still busy with its queue after 120 s"
}

pf_master_pid() { tr -d ' ' <"$PF_SPOOL/pid/master.pid"; }

# ---------- load and sinks ----------

# source ADDR SESSIONS MSGS SIZE: one smtp-source run; prints the wall time in seconds.
source_run() {
	local t0 t1
	t0=$(now)
	/usr/sbin/smtp-source -s "$2" -m "$3" -l "$4" -M client.bench.test \
		-f sender@src.bench.test -t "rcpt@$DOMAIN" "$1" >"$T/smtp-source.out" 2>&1 ||
		{ cat "$T/smtp-source.out" >&2; exit 1; }
	t1=$(now)
	if grep -q . "$T/smtp-source.out"; then
		log "smtp-source said: $(head -3 "$T/smtp-source.out")"
	fi
	elapsed "$t0" "$t1"
}

sink_start() {
	/usr/sbin/smtp-sink -u nobody -c "$1" 1024 >"$T/sink-$2.out" &
	SINK_PID=$!
	for _ in $(seq 50); do
		(exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null && return 0
		sleep 0.1
	done
}

sink_stop() {
	kill "$SINK_PID" 2>/dev/null || true
	wait "$SINK_PID" 2>/dev/null || true
	SINK_PID=""
}

# Peak memory sampler: backupmx (VmRSS) and all of our Postfix processes (sum of PSS).
sampler() {
	set +e
	local peak_b=0 peak_p=0 b p pids
	while :; do
		b=0
		[ -n "$1" ] && b=$(awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0)
		p=0
		if [ -s "$PF_SPOOL/pid/master.pid" ]; then
			pids="$(pf_master_pid) $(pgrep -P "$(pf_master_pid)" | tr '\n' ' ')"
			# PSS, not RSS: Postfix's processes share their libraries. One awk for
			# all of them: a process per Postfix process every half second (50+
			# smtpd linger after a 50-session load) took CPU from the server
			# under test.
			p=$(for x in $pids; do echo "/proc/$x/smaps_rollup"; done | xargs cat 2>/dev/null | awk '/^Pss:/ {s += $2} END {print s + 0}')
		fi
		[ "${b:-0}" -gt "$peak_b" ] && peak_b=$b
		[ "${p:-0}" -gt "$peak_p" ] && peak_p=$p
		echo "$peak_b $peak_p" >"$T/rss.peak"
		sleep 0.5
	done
}

stop_sampler() {
	kill "$SAMPLER_PID" 2>/dev/null || true
	wait "$SAMPLER_PID" 2>/dev/null || true
	SAMPLER_PID=""
}

# perf_start NAME PID / perf_stop: CPU profile of backupmx (PROFILE=1).
PERF_PID=""
perf_start() {
	[ "${PROFILE:-0}" = 1 ] || return 0
	mkdir -p bench/out
	perf record -q -F 999 -e cpu-clock -g -p "$2" -o "bench/out/perf-$1.data" >/dev/null 2>&1 &
	PERF_PID=$!
	sleep 0.3
}
perf_stop() {
	[ -n "$PERF_PID" ] || return 0
	kill -INT "$PERF_PID" 2>/dev/null || true
	wait "$PERF_PID" 2>/dev/null || true
	PERF_PID=""
	perf script -i "bench/out/perf-$1.data" 2>/dev/null >"bench/out/perf-$1.txt"
	python3 bench/perf-summary.py "bench/out/perf-$1.txt" >"bench/out/perf-$1.summary" 2>&1 || true
	log "profile of $1: bench/out/perf-$1.summary"
	sed 's/^/    /' "bench/out/perf-$1.summary" >&2
}

# ---------- accept: primary down ----------

# Both servers are up for the whole phase and take turns: for each load, backupmx then
# Postfix, REPEAT times, a second apart; each cell of the table is the median of that
# server's runs. This VM's speed drifts by ±30% within minutes, so runs of the two
# servers minutes apart (one whole series, then the other) gave ratios from 3.3× to 5.7×
# for the same code; taking turns puts both in the same minutes. Every run is logged.

# median: the median of the numbers on stdin (one per line).
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# bench/floor takes a third turn in the 50-session load: what a Go server that does
# nothing but answer gets from the machine in those minutes (bench/README.md, "the
# floor"). The VM's speed moves the two servers' rates, and their ratio, by up to a
# third within minutes; this says which state each run met.
accept_tests() {
	local secs r name addr runs names c0 cpu
	for spec in "1 $N1 10240" "10 $N10 10240" "50 $N50 10240" "10 $NBIG 102400"; do
		set -- $spec
		names="backupmx postfix"
		[ "$1" = 50 ] && [ "$FLOOR" = 1 ] && names="backupmx postfix floor"
		for name in $names; do : >"$T/runs-$name" && : >"$T/cpu-$name"; done
		for r in $(seq "$REPEAT"); do
			for name in $names; do
				[ "$name" = postfix ] && [ "$SKIP_POSTFIX" = 1 ] && continue
				case $name in
				backupmx) addr=$BMX_SMTP ;;
				postfix) addr=$PF_SMTP ;;
				floor) addr=$FLOOR_SMTP ;;
				esac
				[ "$name" = backupmx ] && [ "$r" = 1 ] && [ "$spec" = "10 $N10 10240" ] && perf_start accept10 "$BMX_PID"
				c0=$(cg_usage "$name")
				secs=$(source_run "$addr" "$1" "$2" "$3")
				[ "$name" = backupmx ] && [ "$r" = 1 ] && [ "$spec" = "10 $N10 10240" ] && perf_stop accept10
				# Postfix defers what it accepted after answering (qmgr, smtp): let it
				# finish before the next run, which may be backupmx's, and count that
				# work in its CPU. (backupmx defers mail for a primary known down
				# before its 250.)
				[ "$name" = postfix ] && pf_settle
				cpu=$((($(cg_usage "$name") - c0) / 1000 / $2))
				log "$name accept (run $r): $2 msgs, $(($3 / 1024)) KB, $1 sessions: ${secs}s → $(rate "$2" "$secs") msg/s${CG:+, CPU $cpu µs/msg}"
				rate "$2" "$secs" >>"$T/runs-$name"
				echo >>"$T/runs-$name"
				echo "$cpu" >>"$T/cpu-$name"
				sleep 1
			done
		done
		for name in $names; do
			[ -s "$T/runs-$name" ] || continue
			runs=$(grep . "$T/runs-$name" | tr '\n' ' ')
			log "$name accept, $(($3 / 1024)) KB, $1 sessions: runs ${runs}→ median $(grep . "$T/runs-$name" | median)"
			# CPU per message only at 50 sessions, where the target is.
			cpu=""
			if [ -n "$CG" ] && [ "$1" = 50 ]; then
				cpu=$(grep . "$T/cpu-$name" | median)
				log "$name CPU per message, $1 sessions: runs $(grep . "$T/cpu-$name" | tr '\n' ' ')→ median $cpu µs"
			fi
			if [ "$name" = floor ]; then
				record "machine gauge: bench/floor, 10 KB, $1 sessions" machine "$(grep . "$T/runs-$name" | median)"
				[ -z "$cpu" ] || record "bench/floor CPU per message, $1 sessions (µs)" machine "$cpu"
			else
				record "accept $(($3 / 1024)) KB, $1 sessions" "$name" "$(grep . "$T/runs-$name" | median)"
				[ -z "$cpu" ] || record "CPU per message, accept 10 KB, $1 sessions (µs)" "$name" "$cpu"
			fi
		done
	done
}

TOTAL_ACCEPT=$(((N1 + N10 + N50 + NBIG) * REPEAT))

log "phase 1: accept, primary down (backupmx's default probe_interval); both servers up, taking turns, $REPEAT runs each"
bmx_start accept default
[ "$SKIP_POSTFIX" != 1 ] && pf_start
if [ "$FLOOR" = 1 ]; then
	(cg_enter floor && exec "$T/floor" "$FLOOR_SMTP" 2>/dev/null) &
	FLOOR_PID=$!
fi
sampler "$BMX_PID" &
SAMPLER_PID=$!
accept_tests
if [ -n "$FLOOR_PID" ]; then
	kill "$FLOOR_PID"
	wait "$FLOOR_PID" 2>/dev/null || true
	FLOOR_PID=""
fi
n=$(bmx_count)
log "backupmx queue after accept: $n deliveries (expected $TOTAL_ACCEPT)"
[ "$n" = "$TOTAL_ACCEPT" ] || { echo "backupmx queue count mismatch" >&2; exit 1; }
if [ "$SKIP_POSTFIX" != 1 ]; then
	sleep 1
	n=$(pf_count)
	log "Postfix queue after accept: $n messages (expected $TOTAL_ACCEPT)"
	[ "$n" = "$TOTAL_ACCEPT" ] || { echo "Postfix queue count mismatch" >&2; exit 1; }
fi
hwm=$(bmx_stop)
stop_sampler
record "peak RSS, accept phase (MB)" backupmx "$hwm"
[ "$SKIP_POSTFIX" != 1 ] && record "peak RSS, accept phase (MB)" postfix "$(($(cut -d' ' -f2 "$T/rss.peak") / 1024))"

# ---------- drain ----------

# wait_empty FN TIMEOUT POLL: seconds until FN says empty.
wait_empty() {
	local deadline
	deadline=$(($(date +%s) + $2))
	while ! $1; do
		if [ "$(date +%s)" -gt "$deadline" ]; then
			echo "queue not empty after $2 s" >&2
			exit 1
		fi
		sleep "$3"
	done
	now
}

# smtp-sink -c writes "sess=N quit=N mesg=N" counters separated by \r.
sink_delivered() { tr '\r' '\n' <"$T/sink-$1.out" | tail -1 | sed 's/.*mesg=//'; }

log "phase 2a: backupmx drain of $DRAIN after the probe (default probe_interval $PROBE_DEFAULT), no flush command"
bmx_start drain-probe default
sampler "$BMX_PID" &
SAMPLER_PID=$!
secs=$(source_run "$BMX_SMTP" 10 "$DRAIN" 10240)
log "backupmx accept $DRAIN × 10 KB, 10 sessions: ${secs}s → $(rate "$DRAIN" "$secs") msg/s"
record "accept 10 KB, 10 sessions, $DRAIN msgs" backupmx "$(rate "$DRAIN" "$secs")"
sleep 2 # let the scheduler defer what it claimed
t_up=$(now)
sink_start "$BMX_SINK" bmx-probe
t_empty=$(wait_empty bmx_empty 300 0.1)
up_secs=$(elapsed "$t_up" "$t_empty")
sink_stop
got=$(sink_delivered bmx-probe)
log "backupmx primary up → queue empty (probe every $PROBE_DEFAULT): ${up_secs}s; sink counted $got"
[ "$got" = "$DRAIN" ] || log "WARNING: the sink received $got messages for $DRAIN queued"
record "primary up → queue empty, $DRAIN msgs (s)" backupmx "$up_secs"
record "drain via probe, msg/s (incl. ≤$PROBE_DEFAULT probe wait)" backupmx "$(rate "$DRAIN" "$up_secs")"
hwm=$(bmx_stop)
stop_sampler
record "peak RSS, drain phase (MB)" backupmx "$hwm"

log "phase 2b: backupmx drain of $DRAIN on 'queue flush' (probe_interval 1h: only the command starts it)"
bmx_start drain-flush 1h
secs=$(source_run "$BMX_SMTP" 10 "$DRAIN" 10240)
log "backupmx accept $DRAIN × 10 KB, 10 sessions: ${secs}s → $(rate "$DRAIN" "$secs") msg/s"
sleep 2
sink_start "$BMX_SINK" bmx-flush
perf_start drain "$BMX_PID"
t0=$(now)
"$T/backupmx" queue flush -config "$BMX_CONF" >/dev/null
t_empty=$(wait_empty bmx_empty 300 0.1)
secs=$(elapsed "$t0" "$t_empty")
perf_stop drain
sink_stop
got=$(sink_delivered bmx-flush)
log "backupmx flush → queue empty: ${secs}s → $(rate "$DRAIN" "$secs") msg/s; sink counted $got"
[ "$got" = "$DRAIN" ] || log "WARNING: the sink received $got messages for $DRAIN queued"
record "drain $DRAIN × 10 KB after flush, msg/s" backupmx "$(rate "$DRAIN" "$secs")"
bmx_stop >/dev/null

if [ "$SKIP_POSTFIX" != 1 ]; then
	log "phase 2: Postfix drain of $DRAIN on 'postqueue -f'"
	postsuper -c "$PF_ETC" -d ALL >/dev/null 2>&1
	sampler "" &
	SAMPLER_PID=$!
	secs=$(source_run "$PF_SMTP" 10 "$DRAIN" 10240)
	log "Postfix accept $DRAIN × 10 KB, 10 sessions: ${secs}s → $(rate "$DRAIN" "$secs") msg/s"
	record "accept 10 KB, 10 sessions, $DRAIN msgs" postfix "$(rate "$DRAIN" "$secs")"
	# Wait until everything has been tried once and deferred.
	for _ in $(seq 600); do
		[ -z "$(find "$PF_SPOOL"/{incoming,active} -type f -print -quit)" ] && break
		sleep 0.5
	done
	n=$(pf_count)
	log "Postfix queue before drain: $n"
	sink_start "$PF_SINK" pf
	t0=$(now)
	postqueue -c "$PF_ETC" -f
	pf_empty() { [ "$(pf_count)" = 0 ]; }
	t_empty=$(wait_empty pf_empty 1200 0.5)
	secs=$(elapsed "$t0" "$t_empty")
	sink_stop
	postqueue -c "$PF_ETC" -p | tail -1 >&2
	log "Postfix postqueue -f → queue empty: ${secs}s → $(rate "$n" "$secs") msg/s; sink counted $(sink_delivered pf)"
	record "drain $DRAIN × 10 KB after flush, msg/s" postfix "$(rate "$n" "$secs")"
	record "primary up → queue empty, $DRAIN msgs (s)" postfix "backoff"
	stop_sampler
	record "peak RSS, drain phase (MB)" postfix "$(($(cut -d' ' -f2 "$T/rss.peak") / 1024))"
fi

# ---------- table ----------

echo
printf '%-48s %12s %12s %8s\n' test backupmx postfix ratio
awk -F'\t' '
	{ key[$1] = 1; if (!($1 in order)) { order[$1] = ++n; name[n] = $1 } v[$1, $2] = $3 }
	END {
		for (i = 1; i <= n; i++) {
			t = name[i]
			if ((t, "machine") in v) { printf "%-48s %12s\n", t, v[t, "machine"]; continue }
			b = v[t, "backupmx"]; p = v[t, "postfix"]; r = ""
			if (b + 0 > 0 && p + 0 > 0) r = sprintf("%.1f×", (t ~ /RSS|\(s\)|µs/) ? p / b : b / p)
			printf "%-48s %12s %12s %8s\n", t, (b == "" ? "-" : b), (p == "" ? "-" : p), r
		}
	}' "$RESULTS"
echo
echo "ratio: backupmx ÷ Postfix for rates; Postfix ÷ backupmx for seconds, RSS and CPU µs (higher is better for backupmx)"
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
