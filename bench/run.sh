#!/usr/bin/env bash
# Every figure of BENCHMARKS.md, in one command (release builds):
#
#   bench/run.sh            # everything: ~17 min on a 2-core machine, plus ~9 min for the fleet part
#   bench/run.sh ingest     # only the loadgen part (rate ladder, 60 s at R and 2R, naive baseline)
#   bench/run.sh core       # only the criterion / memory / full-sync benches
#   bench/run.sh parser     # only the parser: criterion, CPU-time passes, and the CPython baseline
#   bench/run.sh flood      # only the scan flood (BASE_DAEMON=path/to/integration also runs that binary first)
#   bench/run.sh feeds      # only the threat feeds (feedbench: serving, line to entry, memory at 1 M; ~2.5 min)
#   bench/run.sh fleet      # only the fleet (fleetbench: 50 targets, line to the last one, 10 000 blocks; ~9 min)
#
# Environment: RATES (ladder, lines/s), LADDER_SECS (per step), SECS (the long runs), LATENCY (both emulators).
# Raises net.core.rmem_max (root) so the daemon gets the 8 MiB UDP receive buffer it asks for.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
RATES="${RATES:-20000 40000 60000 80000 100000 120000}"
LADDER_SECS="${LADDER_SECS:-15}"
SECS="${SECS:-60}"
LATENCY="${LATENCY:-50ms}"
OUT="${OUT:-target/bench-results}"
mkdir -p "$OUT"

echo "== machine"
uname -srm; nproc; grep -m1 'model name' /proc/cpuinfo || true; free -m | sed -n 2p; uptime
if [ "$(id -u)" = 0 ]; then sysctl -w net.core.rmem_max=33554432 >/dev/null || true; fi
sysctl net.core.rmem_max || true

if [ "$what" = all ] || [ "$what" = core ]; then
  echo "== indicator decision (criterion)"
  cargo bench -p fortimisp-core --bench indicators -- --warm-up-time 1 --measurement-time 3 2>&1 | tee "$OUT/indicators.txt"
  echo "== indicator memory"
  cargo bench -p fortimisp-core --bench indicator_memory 2>&1 | tee "$OUT/indicator_memory.txt"
  echo "== mirror full sync, 1 M attributes"
  cargo bench -p fortimisp-core --bench mirror_sync 2>&1 | tee "$OUT/mirror_sync.txt"
fi

if [ "$what" = all ] || [ "$what" = parser ]; then
  echo "== parser (criterion: fortimisp parse, regex per field, structural floor)"
  cargo bench -p fortimisp-core --bench parser 2>&1 | tee "$OUT/parser.txt"
  echo "== parser, CPU time per implementation (default-format lines, fixed passes)"
  bin=$(cargo bench -p fortimisp-core --bench parser --no-run --message-format=json 2>/dev/null \
    | jq -r 'select(.executable != null and .target.name == "parser") | .executable' | tail -1)
  for impl in ours regex floor; do
    case $impl in ours) passes=20000 ;; regex) passes=4000 ;; floor) passes=40000 ;; esac
    (cd crates/core && PARSER_BENCH_SET=default PARSER_BENCH_IMPL=$impl PARSER_BENCH_PASSES=$passes \
      bash -c 'time "$0"' "$bin") 2>&1 | sed "s/^/$impl: /" | tee -a "$OUT/parser.txt"
  done
  echo "== parser baseline in CPython (the replaced service's language)"
  python3 bench/regex_baseline.py 20 | tee -a "$OUT/parser.txt"
fi

if [ "$what" = all ] || [ "$what" = ingest ]; then
  cargo build --release -p integration -p fortimisp-testkit --bins
  LG="target/release/loadgen"
  common=(--misp-latency "$LATENCY" --fortigate-latency "$LATENCY" --json)
  echo "== ingest ladder (${LADDER_SECS} s per step, daemon, UDP, MISP/FortiGate latency $LATENCY)"
  best=0
  for rate in $RATES; do
    line=$("$LG" --rate "$rate" --duration "${LADDER_SECS}s" "${common[@]}" | tee -a "$OUT/ladder.txt" | grep '^JSON ' | cut -c6-)
    loss=$(jq -r '.loss' <<<"$line"); kern=$(jq -r '.kernel_rcvbuf_errors' <<<"$line"); qf=$(jq -r '.queue_full' <<<"$line")
    echo "rate $rate: loss $loss, kernel RcvbufErrors +$kern, queue_full $qf, sent/s $(jq -r '.send_rate|floor' <<<"$line")"
    if [ "$loss" = 0 ] && [ "$qf" = 0 ]; then best=$rate; else break; fi
  done
  echo "highest zero-loss ladder rate: $best"
  [ "$best" -gt 0 ] || { echo "no zero-loss rate on the ladder"; exit 1; }
  echo "== ${SECS} s at $best (daemon, then the naive baseline at the same rate)"
  "$LG" --rate "$best" --duration "${SECS}s" --system both "${common[@]}" | tee "$OUT/rate_r.txt"
  echo "== ${SECS} s at 2x = $((2 * best)) (daemon)"
  "$LG" --rate "$((2 * best))" --duration "${SECS}s" "${common[@]}" | tee "$OUT/rate_2r.txt"
  echo "== as fast as possible, 10 s (sender bound)"
  "$LG" --rate 0 --duration 10s "${common[@]}" | tee "$OUT/rate_max.txt"
fi

if [ "$what" = all ] || [ "$what" = flood ]; then
  cargo build --release -p integration -p fortimisp-testkit --bins
  LG="target/release/loadgen"
  # 200 000 new sources at 20 000 lines/s, 50 indicators among them sent 3 times 2 s apart, MISP at 1 s, no mirror.
  flood=(--flood-indicators 50 --flood-repeats 3 --flood-gap 2s --rate 20000 --duration 10s --misp-latency 1s
         --max-blocks-per-minute 6000 --fortigate-rps 200 --json)
  if [ -n "${BASE_DAEMON:-}" ]; then
    echo "== scan flood, $BASE_DAEMON"; uptime
    "$LG" "${flood[@]}" --daemon "$BASE_DAEMON" --settle 300s | tee "$OUT/flood_base.txt"
  fi
  echo "== scan flood"; uptime
  "$LG" "${flood[@]}" --settle 60s | tee "$OUT/flood.txt"
fi

if [ "$what" = all ] || [ "$what" = feeds ]; then
  # Two builds: built together with the testkit, cargo would unify dependency features into the daemon; built
  # alone it is the binary the Dockerfile ships.
  cargo build --release -p integration
  cargo build --release -p fortimisp-testkit --bin feedbench
  # Serving 300 000 entries (Python http.server baseline), line to entry (address-group baseline), memory at 1 M.
  echo "== threat feeds"; uptime
  target/release/feedbench --misp-latency "$LATENCY" --fortigate-latency "$LATENCY" | tee "$OUT/feeds.txt"
fi

if [ "$what" = all ] || [ "$what" = fleet ]; then
  # The daemon built alone, as for the threat feeds.
  cargo build --release -p integration
  cargo build --release -p fortimisp-testkit --bin fleetbench
  # 50 targets at $LATENCY, fleet scope: line to the last target (1-target baseline), requests per block per
  # target, RSS; then 10 000 new blocks at 50 rps per target (the rate limit's time floor as baseline).
  echo "== fleet"; uptime
  target/release/fleetbench --targets 50 --latency "$LATENCY" --blocks 10000 --rps 50 --json | tee "$OUT/fleet.txt"
fi
