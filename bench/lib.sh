# bench/lib.sh: helpers shared by bench/run.sh and bench/postgres.sh (sourced).
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }

# bmx_config HOSTNAME SMTP ADMIN PRIMARY STORE QUEUE [TOP]: prints a backupmx
# config for the benchmarks, everything on loopback: one domain $DOMAIN whose
# primary is PRIMARY, DNS at $DNS_DEAD (a port where nothing listens). All load
# comes from one address and the Postfix side runs plain smtpd (no postscreen,
# no DNSBL), so the door's per-IP limits, pregreet wait and DNSBL are off.
# STORE and QUEUE are the lines of [store] and [queue]; TOP goes after hostname.
bmx_config() {
	cat <<EOF
hostname = "$1"
${7:-}
[smtp]
listen = ["$2"]
max_connections_per_ip = 1000
connection_rate_per_ip = 0
pregreet_wait = "0s"
[dnsbl]
zones = []
[store]
$5
[queue]
$6
[admin]
listen = "$3"
[dns]
resolver = "$DNS_DEAD"
[[domain]]
name = "$DOMAIN"
primary = ["$4"]
EOF
}

# cpu_load PID ADDR MESSAGES SESSIONS: one smtp-source run of 10 KB messages
# to ADDR (primary down for backupmx: nothing but accept); prints "msg/s
# user system", the last two PID's CPU in µs per message (utime and stime
# from /proc/PID/stat, clock ticks of 10 ms). For bench/ab.sh, bench/floor.sh.
cpu_load() {
	local u0 s0 u1 s1 t0 t1
	read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$1/stat")
	t0=$(now)
	smtp-source -s "$4" -m "$3" -l 10240 -M client.bench.test -f sender@src.bench.test \
		-t "rcpt@${DOMAIN:-example.test}" "$2"
	t1=$(now)
	read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$1/stat")
	awk -v n="$3" -v w="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
		-v u="$((u1 - u0))" -v s="$((s1 - s0))" \
		'BEGIN { printf "%d %d %d\n", n / w, u * 10000 / n, s * 10000 / n }'
}
