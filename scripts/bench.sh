#!/usr/bin/env bash
# Benchmarks the chat server against its two baselines in one run and writes BENCHMARKS.md:
#   the bare relay (`chatbench relay`: the same transport without the chat; what the machine allows)
#   and Redis pub/sub used as a chat relay (what many would pick instead).
# Everything runs privately on free loopback ports under one temp dir, and is stopped at exit.
#   scripts/bench.sh [OUTPUT]          (default OUTPUT: BENCHMARKS.md)
#   scripts/bench.sh cluster [OUTPUT]  only the cluster scaling section, in place in OUTPUT
# Then a cluster of two nodes on a private MariaDB and Redis: messages across nodes, and the
# integrity check under every fault at once; then 1, 2 and 3 nodes side by side (scaling).
# Knobs (environment): PAIRS, BIG_PAIRS, MESSAGES, FLOOD_MESSAGES, MEMBERS, FANOUT_MESSAGES, ACKS_MESSAGES,
# IDLE (sessions held; default: as many as the server's open-file limit allows), HOLD (acks sessions
# holding a full window), INTEGRITY_SECS, LOGINS (login cycles per scaling step).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=full
if [ "${1:-}" = cluster ]; then
    mode=cluster
    shift
fi
out=${1:-BENCHMARKS.md}
PAIRS=${PAIRS:-100}
BIG_PAIRS=${BIG_PAIRS:-1000}
MESSAGES=${MESSAGES:-2000}
FLOOD_MESSAGES=${FLOOD_MESSAGES:-40000}
MEMBERS=${MEMBERS:-1000}
FANOUT_MESSAGES=${FANOUT_MESSAGES:-2000}
ACKS_MESSAGES=${ACKS_MESSAGES:-500}
INTEGRITY_SECS=${INTEGRITY_SECS:-120}
HOLD=${HOLD:-200}
LOGINS=${LOGINS:-300}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" -eq 0 ] || { echo "bench.sh: missing ${missing[*]}" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cargo build --release --locked --bins -q

dir=$(mktemp -d /tmp/chat-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # What the faults of the integrity run started again: not our children, so not waited for.
    local started=()
    for f in "$dir"/*.pid; do [ -f "$f" ] && started+=("$(cat "$f")"); done
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for pid in "${started[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    done
    rm -rf "$dir" || echo "bench.sh: could not remove $dir" >&2
}
trap cleanup EXIT

. scripts/lib.sh

# Starts a program that prints "listening on ADDR"; sets $addr and $pid.
start_listening() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    pid=$!
    pids+=("$pid")
    for _ in $(seq 1 100); do
        addr=$(sed -n 's/^listening on //p' "$log")
        [ -n "$addr" ] && return 0
        sleep 0.1
    done
    echo "bench.sh: the program logging to $log did not start:" >&2
    cat "$log" >&2
    exit 1
}

bench=target/release/chatbench
# start_redis PORT NAME: a private Redis without persistence; sets $redis_pid.
start_redis() {
    local port=$1 name=$2
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --logfile "$dir/$name.log" &
    redis_pid=$!
    pids+=("$redis_pid")
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    if ! kill -0 "$redis_pid" 2>/dev/null || ! redis-cli -p "$port" ping >/dev/null 2>&1; then
        echo "bench.sh: redis-server did not start on port $port:" >&2
        cat "$dir/$name.log" >&2
        exit 1
    fi
}

# run NAME TARGET ADDR PID ARGS...: one chatbench run, its JSON line kept in $dir/NAME.json.
run() {
    local name=$1 target=$2 addr=$3 pid=$4
    shift 4
    echo "== $name" >&2
    "$bench" "$@" --target "$target" --addr "$addr" --pid "$pid" --json >"$dir/$name.json"
    cat "$dir/$name.json" >&2
}
field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$dir/$1.json"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "–" }'; }
rate() { awk -v r="$(field "$1" rate)" 'BEGIN { printf "%.0f", r }'; }
cpu() { awk -v c="$(field "$1" server_cpu_us_per_msg)" 'BEGIN { printf "%.2f", c }'; }

if [ "$mode" = full ]; then
# The server's password hash is made cheap here: logins are set-up, not what is measured
# (the idle scenario reports logins/s with this cost; the default cost is about 20 ms each).
start_listening "$dir/chat.log" target/release/chatserver --listen 127.0.0.1:0 --store "sqlite:$dir/chat.db" \
    --hash-memory-kib 256 --hash-iterations 1
chat_addr=$addr chat_pid=$pid
start_listening "$dir/relay.log" "$bench" relay --listen 127.0.0.1:0 --threads "$(nproc)"
relay_addr=$addr relay_pid=$pid
redis_port=$(free_port)
start_redis "$redis_port" redis
redis_addr=127.0.0.1:$redis_port


for sys in chat:$chat_addr:$chat_pid relay:$relay_addr:$relay_pid redis:$redis_addr:$redis_pid; do
    IFS=: read -r name host port pid <<<"$sys"
    target=chat
    [ "$name" = redis ] && target=redis
    # Warm-up: first runs pay for page faults and cold caches.
    run "warm-$name" $target "$host:$port" "$pid" flood --pairs 20 --messages 5000
    run "pingpong-$name" $target "$host:$port" "$pid" pingpong --pairs "$PAIRS" --messages "$MESSAGES"
    run "pingpong1k-$name" $target "$host:$port" "$pid" pingpong --pairs "$BIG_PAIRS" \
        --messages $((MESSAGES * PAIRS / BIG_PAIRS))
    run "flood-$name" $target "$host:$port" "$pid" flood --pairs 50 --messages "$FLOOD_MESSAGES" --window 64
    if [ "$name" != relay ]; then # the relay has no groups
        run "fanout-$name" $target "$host:$port" "$pid" fanout --pairs 1 --members "$MEMBERS" \
            --messages "$FANOUT_MESSAGES" --window 16
    fi
done
# Latency at half of the chat server's peak pingpong rate.
half=$(awk -v r="$(field pingpong-chat rate)" 'BEGIN { printf "%.0f", r / 2 }')
run "half-chat" chat "$chat_addr" "$chat_pid" pingpong --pairs "$PAIRS" --messages "$MESSAGES" --rate "$half"
run "half-redis" redis "$redis_addr" "$redis_pid" pingpong --pairs "$PAIRS" --messages "$MESSAGES" --rate "$half"
# The same rate through the bare relay: what the tail owes to the transport.
run "half-relay" chat "$relay_addr" "$relay_pid" pingpong --pairs "$PAIRS" --messages "$MESSAGES" --rate "$half"
# Acknowledged sessions: every delivery is stored in the recipient's mailbox before its sender's
# answer and read from there, and each user acknowledges what it received (msgid 12).
run "acks-chat" chat "$chat_addr" "$chat_pid" pingpong --pairs "$PAIRS" --messages "$ACKS_MESSAGES" --acks
ahalf=$(awk -v r="$(field acks-chat rate)" 'BEGIN { printf "%.0f", r / 2 }')
run "acks-half-chat" chat "$chat_addr" "$chat_pid" pingpong --pairs "$PAIRS" --messages "$ACKS_MESSAGES" \
    --rate "$ahalf" --acks

# Idle sessions, on a fresh node (memory freed by the runs above would hide what sessions cost):
# as many as its open-file limit allows, less a margin.
kill "$chat_pid"
start_listening "$dir/idle.log" target/release/chatserver --listen 127.0.0.1:0 --store "sqlite:$dir/idle.db" \
    --hash-memory-kib 256 --hash-iterations 1
chat_addr=$addr chat_pid=$pid
limit=$(awk '/Max open files/ { print $4 }' "/proc/$chat_pid/limits")
IDLE=${IDLE:-$((limit - 100))}
echo "== idle $IDLE" >&2
"$bench" idle --addr "$chat_addr" --connections "$IDLE" --procs $(((IDLE + 4999) / 5000)) --pid "$chat_pid" \
    --json >"$dir/idle.json"
cat "$dir/idle.json" >&2
kill "$chat_pid"
# Acks sessions that never acknowledge, each given more than its window (1,000), on a fresh node
# that never ends them for it (--ack-timeout 0): what holding full windows costs.
start_listening "$dir/hold.log" target/release/chatserver --listen 127.0.0.1:0 --store "sqlite:$dir/hold.db" \
    --hash-memory-kib 256 --hash-iterations 1 --ack-timeout 0
echo "== $HOLD acks sessions holding a full window" >&2
"$bench" idle --addr "$addr" --connections "$HOLD" --procs 1 --acks --fill 1100 --pid "$pid" --json >"$dir/hold.json"
cat "$dir/hold.json" >&2
kill "$pid"

fi

start_mariadb "$dir"
pids+=("$db_pid")

if [ "$mode" = full ]; then
# The cluster: two nodes, MariaDB, Redis. Users connect to the nodes' own ports in turn (user i
# to node i % 2), so both users of a pair are on different nodes and every message crosses.
cluster_redis_port=$(free_port)
start_redis "$cluster_redis_port" cluster-redis
echo "$redis_pid" >"$dir/cluster-redis.pid"
node_ports=("$(free_port)" "$(free_port)")
node_cmd() { # node_cmd I: the command line of node I, on its own port
    echo "$PWD/target/release/chatserver --listen 127.0.0.1:${node_ports[$1]} --node-id bench-n$1" \
        "--store mysql://root@127.0.0.1:$db_port/chat --bus redis://127.0.0.1:$cluster_redis_port" \
        "--hash-memory-kib 256 --hash-iterations 1 --ack-timeout 2"
}
for i in 0 1; do
    # shellcheck disable=SC2046 # the command line is meant to split into words
    start_listening "$dir/node$i.log" $(node_cmd $i)
    echo "$pid" >"$dir/node$i.pid"
done
cluster_pids="$(cat "$dir/node0.pid"),$(cat "$dir/node1.pid"),$redis_pid,$db_pid"
both="${node_ports[0]},${node_ports[1]}"
run "warm-cluster" chat 127.0.0.1 "$cluster_pids" flood --ports "$both" --pairs 20 --messages 2000
run "cross-flood" chat 127.0.0.1 "$cluster_pids" flood --ports "$both" --pairs 50 \
    --messages $((FLOOD_MESSAGES / 4)) --window 64
run "same-flood" chat 127.0.0.1 "$cluster_pids" flood --ports "${node_ports[0]}" --pairs 50 \
    --messages $((FLOOD_MESSAGES / 4)) --window 64
run "cross-pingpong" chat 127.0.0.1 "$cluster_pids" pingpong --ports "$both" --pairs "$PAIRS" \
    --messages $((MESSAGES / 4))
run "same-pingpong" chat 127.0.0.1 "$cluster_pids" pingpong --ports "${node_ports[0]}" --pairs "$PAIRS" \
    --messages $((MESSAGES / 4))
# Integrity under every fault: clients reset and blackholed throughout, and in turn a node
# killed (-9) and started again, Redis killed (-9) and started again empty, the other node,
# Redis shut down and started again.
restart_node() { # restart_node I: a fault command
    echo "kill -9 \$(cat $dir/node$1.pid); sleep 1; $(node_cmd "$1") >>$dir/node$1.log 2>&1 </dev/null &" \
        "echo \$! >$dir/node$1.pid"
}
redis_again="redis-server --port $cluster_redis_port --bind 127.0.0.1 --save '' --appendonly no --dir $dir"
redis_again+=" --logfile $dir/cluster-redis.log </dev/null & echo \$! >$dir/cluster-redis.pid"
echo "== integrity, $INTEGRITY_SECS s, all faults" >&2
"$bench" integrity --addr 127.0.0.1 --ports "$both" --users 20 --secs "$INTEGRITY_SECS" --rate 200 --drain 60 \
    --rst-every 2000 --blackhole-every 5000 --blackhole-for 3000 --fault-every 15000 \
    --fault "$(restart_node 0)" \
    --fault "kill -9 \$(cat $dir/cluster-redis.pid); sleep 1; $redis_again" \
    --fault "$(restart_node 1)" \
    --fault "redis-cli -p $cluster_redis_port shutdown nosave; sleep 1; $redis_again" \
    --json >"$dir/integrity.json" || true
cat "$dir/integrity.json" >&2
fi

# Scaling: 1, 2 and 3 nodes on one MariaDB (and, from two nodes, one Redis); users connect to
# every node in turn, so with n nodes a message crosses nodes (n-1)/n of the time. One node is
# the single-node deployment (no bus). CPU is summed over every process; the nodes' share and
# Redis's are split out: Redis is one thread, so its share bounds a cluster whatever its size.
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
scale_redis_port=$(free_port)
start_redis "$scale_redis_port" scale-redis
scale_redis_pid=$redis_pid
# srun NAME NODE_PIDS ARGS...: a chatbench run whose CPU is split into nodes, Redis, MariaDB.
srun() {
    local name=$1 nodes=$2
    shift 2
    local r0 d0
    r0=$(ticks "$scale_redis_pid") d0=$(ticks "$db_pid")
    run "$name" chat 127.0.0.1 "$nodes,$scale_redis_pid,$db_pid" "$@"
    echo "$(($(ticks "$scale_redis_pid") - r0)) $(($(ticks "$db_pid") - d0))" >"$dir/$name.ticks"
}
for n in 1 2 3; do
    scale_pids=() scale_ports=()
    for i in $(seq 0 $((n - 1))); do
        bus=()
        [ "$n" -gt 1 ] && bus=(--bus "redis://127.0.0.1:$scale_redis_port" --node-id "scale$n-$i")
        start_listening "$dir/scale$n-$i.log" target/release/chatserver --listen 127.0.0.1:0 \
            --store "mysql://root@127.0.0.1:$db_port/chat" "${bus[@]}" --hash-memory-kib 256 --hash-iterations 1
        scale_pids+=("$pid") scale_ports+=("${addr##*:}")
    done
    nodes=$(IFS=,; echo "${scale_pids[*]}") ports=$(IFS=,; echo "${scale_ports[*]}")
    srun "s$n-warm" "$nodes" flood --ports "$ports" --pairs 20 --messages 2000
    srun "s$n-pingpong" "$nodes" pingpong --ports "$ports" --pairs "$PAIRS" --messages $((MESSAGES / 4))
    srun "s$n-flood" "$nodes" flood --ports "$ports" --pairs 50 --messages $((FLOOD_MESSAGES / 4)) --window 64
    srun "s$n-fanout" "$nodes" fanout --ports "$ports" --pairs 1 --members "$MEMBERS" \
        --messages $((FANOUT_MESSAGES / 2)) --window 16
    if [ "$n" -eq 2 ]; then # every member on one node of the two
        srun "s2-fanout-one" "$nodes" fanout --ports "${scale_ports[0]}" --pairs 1 --members "$MEMBERS" \
            --messages $((FANOUT_MESSAGES / 2)) --window 16
    fi
    c0=$(redis-cli -p "$scale_redis_port" info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p')
    echo "== s$n-logins" >&2
    "$bench" logins --addr 127.0.0.1 --ports "$ports" --friends 100 --messages "$LOGINS" \
        --pid "$nodes,$scale_redis_pid,$db_pid" --json >"$dir/s$n-logins.json"
    cat "$dir/s$n-logins.json" >&2
    c1=$(redis-cli -p "$scale_redis_port" info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p')
    echo $(((c1 - c0) - 1)) >"$dir/s$n-logins.redis" # less the INFO itself
    for p in "${scale_pids[@]}"; do kill "$p"; done
    for p in "${scale_pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
done
# The scaling tables, in markdown, for the report.
{
    clk=$(getconf CLK_TCK)
    echo "## Cluster scaling: 1, 2 and 3 nodes"
    echo
    echo "Written by \`scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'); every process on the same $(nproc) cores."
    echo "One MariaDB; from two nodes on, Redis between them. Users connect to every node in turn, so"
    echo "with n nodes (n-1)/n of one-to-one messages cross nodes, and a group's members are spread"
    echo "over all of them. One node is the single-node deployment (no Redis). CPU is per delivered"
    echo "message, summed over every process, then split: on $(nproc) shared cores more nodes cannot add"
    echo "throughput, but CPU per message is what predicts it on real machines: a node core carries"
    echo "about 10⁶ / (node µs) messages per second, and Redis, one thread, caps a whole cluster at"
    echo "about 10⁶ / (Redis µs)."
    echo
    echo "| nodes | run | msg/s | p50 µs | p99 µs | CPU µs, all | nodes | Redis | MariaDB | per node core, msg/s | Redis cap, msg/s |"
    echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for n in 1 2 3; do
        for r in pingpong flood fanout fanout-one; do
            f="s$n-$r"
            [ -f "$dir/$f.json" ] || continue
            read -r rt dt <"$dir/$f.ticks"
            awk -v n="$n" -v r="$r" -v rate="$(field "$f" rate)" -v p50="$(field "$f" p50_us)" \
                -v p99="$(field "$f" p99_us)" -v all="$(field "$f" server_cpu_us_per_msg)" \
                -v rt="$rt" -v dt="$dt" -v clk="$clk" -v secs="$(field "$f" seconds)" 'BEGIN {
                msgs = rate * secs
                redis = msgs > 0 ? rt / clk * 1e6 / msgs : 0
                db = msgs > 0 ? dt / clk * 1e6 / msgs : 0
                node = all - redis - db
                if (r == "fanout-one") r = "fanout, all members on one node"
                else if (r == "fanout") r = "fanout, 1 group of '"$MEMBERS"'"
                else if (r == "flood") r = "flood, 50 pairs, window 64"
                else r = "pingpong, '"$PAIRS"' pairs"
                per_node = (node > 0) ? sprintf("%.0f", 1e6 / node) : "–"
                cap = (n > 1 && redis > 0) ? sprintf("%.0f", 1e6 / redis) : "–"
                printf "| %d | %s | %.0f | %d | %d | %.2f | %.2f | %.2f | %.2f | %s | %s |\n", n, r, rate, p50, p99, all, node, redis, db, per_node, cap
            }'
        done
    done
    echo
    s1=$(field s1-fanout rate) s2=$(field s2-fanout rate) s2one=$(field s2-fanout-one rate)
    echo "Group chat, 2 nodes against 1: members spread $(ratio "$s2" "$s1"), all members on one node $(ratio "$s2one" "$s1")."
    echo "One-to-one across 2 nodes against 1: pingpong $(ratio "$(field s2-pingpong rate)" "$(field s1-pingpong rate)"),"
    echo "flood $(ratio "$(field s2-flood rate)" "$(field s1-flood rate)")."
    echo
    echo "Login with 100 friends (half online, spread over the nodes), then logout, $LOGINS times, on the nodes in turn:"
    echo
    echo "| nodes | logins/s | cycle p50 µs | cycle p99 µs | Redis commands per login + logout |"
    echo "|---:|---:|---:|---:|---:|"
    for n in 1 2 3; do
        per=–
        [ "$n" -gt 1 ] && per=$(awk -v c="$(cat "$dir/s$n-logins.redis")" -v l="$LOGINS" 'BEGIN { printf "%.1f", c / l }')
        echo "| $n | $(awk -v r="$(field "s$n-logins" logins_per_s)" 'BEGIN { printf "%.0f", r }') | $(field "s$n-logins" cycle_p50_us) | $(field "s$n-logins" cycle_p99_us) | $per |"
    done
} >"$dir/scaling.md"

if [ "$mode" = cluster ]; then
    # Only the scaling section: in place of the one in $out, if it has one.
    if [ -f "$out" ] && grep -q '^## Cluster scaling' "$out"; then
        awk -v frag="$dir/scaling.md" '/^## Cluster scaling/ { while ((getline l < frag) > 0) print l; skip = 1; next }
            skip && /^## / { skip = 0 } !skip' "$out" >"$dir/out.md"
        cp "$dir/out.md" "$out"
    else
        cat "$dir/scaling.md" >>"$out"
    fi
    echo "bench.sh: wrote the scaling section of $out" >&2
    exit 0
fi

row() { # row LABEL NAME: throughput, latency and CPU of chat, relay and Redis, and the ratios
    local label=$1 n=$2 relay=– redis=– vs_relay=– vs_redis=–
    [ -f "$dir/$n-relay.json" ] && relay=$(rate "$n-relay") && vs_relay=$(ratio "$(rate "$n-chat")" "$relay")
    [ -f "$dir/$n-redis.json" ] && redis=$(rate "$n-redis") && vs_redis=$(ratio "$(rate "$n-chat")" "$redis")
    echo "| $label | $(rate "$n-chat") | $relay | $redis | $vs_relay | $vs_redis |"
}
lat() { # lat LABEL NAME
    echo "| $1 | $(field "$2" p50_us) | $(field "$2" p99_us) | $(field "$2" p999_us) | $(field "$2" max_us) | $(cpu "$2") |"
}
{
    echo "# Benchmarks"
    echo
    echo "Written by \`scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'): $(nproc) cores"
    echo "($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), $(uname -sr)."
    echo "The load generator runs on the same cores as the server, and every figure comes from this one"
    echo "run: compare the ratios, not the absolute numbers, across machines."
    echo
    echo "- **chat**: \`chatserver\`, one node, SQLite store, $(nproc) reactors."
    echo "- **relay**: \`chatbench relay\`, the same transport (reactors, codec, output queues,"
    echo "  presence map, channel hops) without the chat: the limit."
    echo "- **Redis**: \`redis-server $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')\` pub/sub as a chat relay"
    echo "  (each user SUBSCRIBEs its channel and PUBLISHes to its partner's): the peer."
    echo
    echo "## Throughput (messages delivered per second)"
    echo
    echo "| scenario | chat | relay | Redis | chat / relay | chat / Redis |"
    echo "|---|---:|---:|---:|---:|---:|"
    row "pingpong, $PAIRS pairs" pingpong
    row "pingpong, $BIG_PAIRS pairs" pingpong1k
    row "flood, 50 pairs, window 64" flood
    row "fanout, 1 group of $MEMBERS, window 16" fanout
    echo "| pingpong with acks, $PAIRS pairs | $(rate acks-chat) | – | – | – | – |"
    echo
    echo "## Latency (one-way, µs) and server CPU (µs per message delivered)"
    echo
    echo "| run | p50 | p99 | p99.9 | max | CPU |"
    echo "|---|---:|---:|---:|---:|---:|"
    for n in pingpong pingpong1k flood fanout; do
        for s in chat relay redis; do
            [ -f "$dir/$n-$s.json" ] && lat "$n $s" "$n-$s"
        done
    done
    lat "pingpong chat at $half msg/s (half of its peak)" half-chat
    lat "pingpong Redis at $half msg/s" half-redis
    lat "pingpong relay at $half msg/s" half-relay
    lat "pingpong with acks" acks-chat
    lat "pingpong with acks at $ahalf msg/s (half of its peak)" acks-half-chat
    echo
    echo "Fanout, time until the last member has a message (µs): chat p50 $(field fanout-chat last_member_p50_us),"
    echo "p99 $(field fanout-chat last_member_p99_us); Redis p50 $(field fanout-redis last_member_p50_us),"
    echo "p99 $(field fanout-redis last_member_p99_us)."
    echo
    echo "## Against the targets"
    echo
    met() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == ">=") ? v >= t : v <= t; print ok ? "met" : "**not met**" }'; }
    pp=$(rate pingpong-chat) ppr=$(rate pingpong-relay) ppx=$(rate pingpong-redis)
    echo "| target | measured | |"
    echo "|---|---:|---|"
    echo "| pingpong ≥ 0.7× the bare relay | $(ratio "$pp" "$ppr") | $(met "$(awk -v a="$pp" -v b="$ppr" 'BEGIN { print a / b }')" 0.7 ">=") |"
    echo "| pingpong ≥ 1.5× Redis pub/sub | $(ratio "$pp" "$ppx") | $(met "$(awk -v a="$pp" -v b="$ppx" 'BEGIN { print a / b }')" 1.5 ">=") |"
    echo "| pingpong p99 < 1 ms at half of peak | $(field half-chat p99_us) µs | $(met "$(field half-chat p99_us)" 999 "<=") |"
    echo "| flood ≥ 300,000 msg/s | $(rate flood-chat) | $(met "$(rate flood-chat)" 300000 ">=") |"
    echo "| durable flood ≥ 250,000 msg/s | $(rate flood-chat) | $(met "$(rate flood-chat)" 250000 ">=") |"
    echo "| pingpong with acks: p99 < 2 ms at half of peak | $(field acks-half-chat p99_us) µs | $(met "$(field acks-half-chat p99_us)" 1999 "<=") |"
    echo "| fanout to 1,000 members ≥ 500,000 deliveries/s | $(rate fanout-chat) | $(met "$(rate fanout-chat)" 500000 ">=") |"
    bytes=$(awk -v b="$(field idle server_bytes_per_session)" 'BEGIN { printf "%.0f", b }')
    echo "| idle: ≤ 4 KiB of server memory per session | $bytes B | $(met "$bytes" 4096 "<=") |"
    echo "| cluster: durable flood across nodes ≥ 60,000 msg/s | $(rate cross-flood) | $(met "$(rate cross-flood)" 60000 ">=") |"
    x() { awk -v a="$1" -v b="$2" 'BEGIN { print (b > 0) ? a / b : 0 }'; }
    cp_x=$(x "$(cpu cross-pingpong)" "$(cpu same-pingpong)") pp_x=$(x "$(rate cross-pingpong)" "$(rate same-pingpong)")
    fl_x=$(x "$(rate cross-flood)" "$(rate same-flood)")
    echo "| cluster: CPU per message across nodes ≤ 2× same node (pingpong) | $(ratio "$(cpu cross-pingpong)" "$(cpu same-pingpong)") | $(met "$cp_x" 2 "<=") |"
    echo "| cluster: pingpong across nodes ≥ 0.7× same node | $(ratio "$(rate cross-pingpong)" "$(rate same-pingpong)") | $(met "$pp_x" 0.7 ">=") |"
    echo "| cluster: flood across nodes ≥ 0.5× same node | $(ratio "$(rate cross-flood)" "$(rate same-flood)") | $(met "$fl_x" 0.5 ">=") |"
    echo "| cluster: group of $MEMBERS over 2 nodes ≥ 500,000 deliveries/s | $(rate s2-fanout) | $(met "$(rate s2-fanout)" 500000 ">=") |"
    one_x=$(x "$(rate s2-fanout-one)" "$(rate s1-fanout)")
    echo "| cluster: group all on one node of 2 ≥ 0.8× one node | $(ratio "$(rate s2-fanout-one)" "$(rate s1-fanout)") | $(met "$one_x" 0.8 ">=") |"
    lost=$(field integrity lost)
    echo "| integrity with every fault: 0 lost | ${lost:-–} | $(met "${lost:-1}" 0 "<=") |"
    echo
    echo "## Acks sessions that never acknowledge"
    echo
    hold_kib=$(field hold fill_growth_kib)
    echo "$(field hold sessions) sessions with acks, each sent 1,100 messages and acknowledging none: they received"
    echo "$(field hold received) in all, at most $(field hold received_most) each (the window is 1,000); the server's RSS grew by"
    echo "$hold_kib KiB while they filled ($(awk -v k="$hold_kib" -v n="$(field hold sessions)" 'BEGIN { if (n > 0) printf "%.0f", k * 1024 / n }') bytes per session, the"
    echo "store's caches included)."
    echo
    echo "## Cluster: two nodes, MariaDB, Redis"
    echo
    echo "Both nodes, Redis and MariaDB on the same $(nproc) cores as the load generator; CPU is summed over"
    echo "all four processes. Across nodes: each user of a pair on its own node, every message crosses"
    echo "through Redis. Same node: both users on one node of the cluster."
    echo
    echo "| run | msg/s | p50 µs | p99 µs | CPU µs per message |"
    echo "|---|---:|---:|---:|---:|"
    for n in cross-flood same-flood cross-pingpong same-pingpong; do
        echo "| $n | $(rate "$n") | $(field "$n" p50_us) | $(field "$n" p99_us) | $(cpu "$n") |"
    done
    echo
    echo "Across nodes / same node, flood: $(ratio "$(rate cross-flood)" "$(rate same-flood)")."
    echo
    echo "Integrity, $INTEGRITY_SECS s of sending with every fault (clients reset every 2 s, a path blackholed every"
    echo "5 s; every 15 s in turn: a node killed -9 and restarted, Redis killed -9 and restarted empty, the"
    echo "other node, Redis shut down and restarted):"
    echo
    echo "| attempted | acknowledged | delivered | lost | unexpected | duplicated | recovered | order violations | faults run (failed) |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    echo "| $(field integrity attempted) | $(field integrity acknowledged) | $(field integrity delivered) | $(field integrity lost) | $(field integrity unexpected) | $(field integrity duplicated) | $(field integrity recovered) | $(field integrity order_violations) | $(field integrity faults) ($(field integrity faults_failed)) |"
    echo
    echo "## Idle sessions"
    echo
    echo "$(field idle sessions) logged-in sessions held on one node (its open-file limit: $limit), from"
    echo "$(field idle procs) client processes: $(awk -v b="$(field idle server_bytes_per_session)" 'BEGIN { printf "%.0f", b }') bytes of server RSS per session"
    echo "(server RSS $(field idle server_rss_kib) KiB in all), $(awk -v l="$(field idle logins_per_s)" 'BEGIN { printf "%.0f", l }') registrations + logins per second"
    echo "with the password hash at 256 KiB / 1 pass (the default, 19 MiB / 2 passes, costs about 20 ms of"
    echo "one core per login and per registration)."
    echo
    cat "$dir/scaling.md"
} >"$out"
echo "bench.sh: wrote $out" >&2
