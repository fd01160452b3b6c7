# bench/lib.sh: helpers shared by bench/run.sh and bench/postgres.sh (sourced).
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
