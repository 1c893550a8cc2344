# Shared by the scripts: sourced, not run.

# Prints a loopback port nobody listens on (a refused connection means it is free).
free_port() {
    local port
    while :; do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
}
