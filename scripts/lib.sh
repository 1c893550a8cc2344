# Shared by the scripts: sourced, not run.

# Prints a loopback port nobody listens on (a refused connection means it is free), below the
# kernel's ephemeral range: a port in that range may be held by an outgoing connection that is
# still closing, and a server could not bind it.
free_port() {
    local low port
    low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    [ "$low" -gt 11000 ] || low=32768
    while :; do
        port=$((10000 + RANDOM % (low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}

# Starts a private MariaDB in DIR/mariadb on a free loopback port, without passwords (it listens
# on loopback only and lives as long as its caller), with database `chat` loaded from
# schema.sql; sets $db_port and $db_pid.
start_mariadb() {
    local dir=$1
    db_port=$(free_port)
    mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$dir/mariadb" \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/mariadb-install.log" 2>&1
    mariadbd --no-defaults --user="$(id -un)" --datadir="$dir/mariadb" --socket="$dir/mariadb.sock" \
        --port="$db_port" --bind-address=127.0.0.1 --skip-grant-tables --skip-log-bin \
        --pid-file="$dir/mariadb.pid" --log-error="$dir/mariadb.log" </dev/null >"$dir/mariadb.out" 2>&1 &
    db_pid=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$db_port") 2>/dev/null && break
        sleep 0.1
    done
    mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot -e "CREATE DATABASE IF NOT EXISTS chat CHARACTER SET utf8mb4"
    mariadb --no-defaults -h127.0.0.1 -P"$db_port" -uroot chat <schema.sql
}
