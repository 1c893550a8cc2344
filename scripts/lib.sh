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
