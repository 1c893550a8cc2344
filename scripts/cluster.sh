#!/usr/bin/env bash
# A private chat cluster on this machine: MariaDB, Redis, N nodes and nginx in front, each on a
# free loopback port, all under one temp dir.
#   scripts/cluster.sh up [N]   start (N nodes, default 2) and print the client address
#   scripts/cluster.sh status   what runs, and where
#   scripts/cluster.sh down     stop exactly what `up` started, and remove its dir
set -euo pipefail
cd "$(dirname "$0")/.."
pointer="${XDG_RUNTIME_DIR:-/tmp}/chat-cluster.dir"

. scripts/lib.sh

wait_port() {
    local port=$1 what=$2
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "cluster.sh: $what did not come up on port $port" >&2
    return 1
}

install_missing() {
    local missing=()
    command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
    [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" -ne 0 ]; then
        echo "cluster.sh: missing ${missing[*]}: install them, or run as root" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

up() {
    local nodes=${1:-2}
    if [ -f "$pointer" ] && [ -d "$(cat "$pointer")" ]; then
        echo "cluster.sh: a cluster is already up in $(cat "$pointer"); run down first" >&2
        exit 1
    fi
    install_missing
    local built
    built=$(./scripts/autobuild.sh 2>&1) || { echo "$built" >&2; exit 1; }
    local dir bin
    dir=$(mktemp -d /tmp/chat-cluster.XXXXXX)
    bin="$PWD/target/release/chatserver"
    echo "$dir" >"$pointer"

    local redis_port
    start_mariadb "$dir"
    echo "$db_pid" >"$dir/mariadb.pidof"

    redis_port=$(free_port)
    redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$dir" \
        </dev/null >"$dir/redis.log" 2>&1 &
    echo $! >"$dir/redis.pidof"
    wait_port "$redis_port" Redis

    local upstream="" port
    for i in $(seq 1 "$nodes"); do
        port=$(free_port)
        "$bin" --listen "127.0.0.1:$port" --node-id "node$i" --proxy-protocol \
            --store "mysql://root@127.0.0.1:$db_port/chat" --bus "redis://127.0.0.1:$redis_port" \
            </dev/null >"$dir/node$i.out" 2>"$dir/node$i.log" &
        echo $! >"$dir/node$i.pidof"
        wait_port "$port" "node $i"
        upstream+="        server 127.0.0.1:$port max_fails=1 fail_timeout=5s;\n"
    done

    local front=8000
    (exec 3<>"/dev/tcp/127.0.0.1/$front") 2>/dev/null && front=$(free_port)
    awk -v up="$upstream" -v listen="        listen 127.0.0.1:$front;" '
        /# node$/ { if (!done) { printf "%s", up; done = 1 } next }
        /# listen$/ { print listen; next }
        { print }' nginx.conf >"$dir/nginx.conf"
    # Daemons get no terminal and none of this script's output: a caller reading it sees the end.
    nginx -p "$dir" -c nginx.conf -e error.log -g 'daemon off;' </dev/null >"$dir/nginx.out" 2>&1 &
    echo $! >"$dir/nginx.pidof"
    wait_port "$front" nginx

    echo "cluster up in $dir: $nodes nodes, MariaDB on $db_port, Redis on $redis_port"
    echo "clients connect to 127.0.0.1:$front   (e.g. target/release/chatclient --addr 127.0.0.1:$front)"
}

status() {
    [ -f "$pointer" ] || { echo "no cluster"; return; }
    local dir
    dir=$(cat "$pointer")
    echo "cluster in $dir"
    for f in "$dir"/*.pidof; do
        local name pid state=down
        name=$(basename "$f" .pidof)
        pid=$(cat "$f")
        kill -0 "$pid" 2>/dev/null && state="up (pid $pid)"
        echo "  $name: $state"
    done
    grep -hE '^\s*listen 127' "$dir/nginx.conf" | sed -E 's/^ *listen ([^;]*);/  clients connect to \1/'
}

down() {
    [ -f "$pointer" ] || { echo "no cluster"; return; }
    local dir
    dir=$(cat "$pointer")
    # Front first, the nodes (graceful: SIGTERM), then what they depend on.
    for name in nginx $(cd "$dir" && ls node*.pidof 2>/dev/null | sed 's/.pidof//') redis mariadb; do
        [ -f "$dir/$name.pidof" ] || continue
        local pid
        pid=$(cat "$dir/$name.pidof")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
    rm -rf "$dir" "$pointer"
    echo "cluster down"
}

case "${1:-}" in
    up) up "${2:-2}" ;;
    status) status ;;
    down) down ;;
    *) echo "usage: $0 up [N] | status | down" >&2; exit 2 ;;
esac
