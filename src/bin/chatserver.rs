//! `chatserver`: one chat node. See `chatserver --help`.

use std::net::TcpListener;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chat::bus::{Bus, LocalBus, RedisBus};
use chat::config::{HashCost, ThrottleLimits};
use chat::{Config, Server};
use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};

#[derive(Debug, Parser)]
#[command(version, about = "A chat server node, wire-compatible with the canonical cluster-chat clients")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "CHAT_LISTEN", default_value = "0.0.0.0:6000")]
    listen: String,
    /// Worker reactors (default: number of cores).
    #[arg(long, env = "CHAT_THREADS")]
    threads: Option<usize>,
    /// Blocking pool threads (default: 2 × cores).
    #[arg(long, env = "CHAT_POOL_THREADS")]
    pool_threads: Option<usize>,
    /// Where users, friends, groups and offline messages live: `sqlite:PATH` or
    /// `mysql://user:pass@host:port/db` (MySQL or MariaDB; tables are created when missing).
    #[arg(long, env = "CHAT_STORE", default_value = "sqlite:chat.db")]
    store: String,
    /// How nodes reach each other: `local` (a single node) or `redis://host:port`.
    #[arg(long, env = "CHAT_BUS", default_value = "local")]
    bus: String,
    /// This node's id on the bus (default: random).
    #[arg(long, env = "CHAT_NODE_ID")]
    node_id: Option<String>,
    /// Largest request frame in bytes.
    #[arg(long, env = "CHAT_MAX_FRAME", default_value_t = 64 * 1024)]
    max_frame: usize,
    /// Largest chat `msg` in bytes.
    #[arg(long, env = "CHAT_MAX_MSG", default_value_t = 16 * 1024)]
    max_msg: usize,
    /// Largest outbound queue per connection in bytes; slower readers are disconnected.
    #[arg(long, env = "CHAT_MAX_OUTBOUND", default_value_t = 4 * 1024 * 1024)]
    max_outbound: usize,
    /// Largest offline mailbox per user, in messages.
    #[arg(long, env = "CHAT_MAILBOX_CAP", default_value_t = 10_000)]
    mailbox_cap: usize,
    /// Argon2id memory cost in KiB.
    #[arg(long, env = "CHAT_HASH_MEMORY_KIB", default_value_t = HashCost::default().memory_kib)]
    hash_memory_kib: u32,
    /// Argon2id passes.
    #[arg(long, env = "CHAT_HASH_ITERATIONS", default_value_t = HashCost::default().iterations)]
    hash_iterations: u32,
    /// Most unacknowledged deliveries of a session that logged in with acks; the rest wait,
    /// stored, until acknowledgements open the window.
    #[arg(long, env = "CHAT_WINDOW", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Seconds an acks session's deliveries may stay unacknowledged before the session is
    /// ended as dead (its messages wait for the next login); 0 never ends one.
    #[arg(long, env = "CHAT_ACK_TIMEOUT", default_value_t = 30)]
    ack_timeout: u64,
    /// Days of history kept (msgid 14); older messages are deleted hourly. 0 keeps everything.
    #[arg(long, env = "CHAT_HISTORY_DAYS", default_value_t = 30)]
    history_days: u32,
    /// Largest request frame before login, in bytes.
    #[arg(long, env = "CHAT_MAX_FRAME_BEFORE_LOGIN", default_value_t = 8 * 1024)]
    max_frame_before_login: usize,
    /// Seconds a connection may stay without a login (since it opened or logged out) before it
    /// is closed; 0 never closes one.
    #[arg(long, env = "CHAT_LOGIN_TIMEOUT", default_value_t = 600)]
    login_timeout: u64,
    /// Most connections the node holds; further ones are reset at once. 0: only the open-file
    /// limit.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 0)]
    max_connections: usize,
    /// Most connections from one source address; 0: no limit (behind a proxy such as nginx,
    /// every client comes from the proxy's address).
    #[arg(long, env = "CHAT_MAX_CONNS_PER_IP", default_value_t = 0)]
    max_conns_per_ip: usize,
    /// Every connection begins with a PROXY header (v1 or v2: nginx's `proxy_protocol on`)
    /// naming the client's address, which limits and logs then use; a connection without a
    /// valid one is reset. Only for a node that nothing but the proxy can reach.
    #[arg(long, env = "CHAT_PROXY_PROTOCOL")]
    proxy_protocol: bool,
    /// Failed logins of one account within 10 minutes before its logins get errno 14 for 15
    /// minutes (no hash computed); 0: no limit.
    #[arg(long, env = "CHAT_LOGIN_FAILURES", default_value_t = 20)]
    login_failures: u32,
    /// As `--login-failures`, for one source address; 0: no limit (behind a proxy every client
    /// comes from the proxy's address).
    #[arg(long, env = "CHAT_LOGIN_FAILURES_PER_IP", default_value_t = 0)]
    login_failures_per_ip: u32,
    /// Registrations from one source address within an hour before errno 14 for an hour; 0: no
    /// limit.
    #[arg(long, env = "CHAT_REGISTRATIONS_PER_IP", default_value_t = 0)]
    registrations_per_ip: u32,
    /// How long shutdown waits, per phase, for work in flight and output to flush (ms).
    #[arg(long, env = "CHAT_SHUTDOWN_GRACE_MS", default_value_t = 700)]
    shutdown_grace_ms: u64,
}

/// Chat messages are allocated on one reactor and freed on another; mimalloc's per-thread heaps
/// take that without the global-lock contention glibc's malloc shows under load.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            eprintln!("chatserver: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let defaults = Config::default();
    let config = Config {
        threads: args.threads.unwrap_or(defaults.threads),
        pool_threads: args.pool_threads.unwrap_or(defaults.pool_threads),
        max_frame: args.max_frame,
        max_frame_before_login: args.max_frame_before_login,
        login_timeout: Duration::from_secs(args.login_timeout),
        max_connections: args.max_connections,
        max_conns_per_ip: args.max_conns_per_ip,
        proxy_protocol: args.proxy_protocol,
        throttle: ThrottleLimits {
            login_failures: args.login_failures,
            login_failures_per_ip: args.login_failures_per_ip,
            registrations_per_ip: args.registrations_per_ip,
        },
        max_msg: args.max_msg,
        max_outbound: args.max_outbound,
        mailbox_cap: args.mailbox_cap,
        hash: HashCost { memory_kib: args.hash_memory_kib, iterations: args.hash_iterations },
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        history_days: args.history_days,
        window: args.window as usize,
        ack_timeout: Duration::from_secs(args.ack_timeout),
        ..defaults
    };
    let store = chat::store::open(&args.store, config.store_connections()).context("--store")?;
    let bus: Box<dyn Bus> = match args.bus.as_str() {
        "local" => Box::new(LocalBus),
        url if url.starts_with("redis://") => {
            let node = args.node_id.unwrap_or_else(random_node_id);
            let bus = RedisBus::connect(url, &node).context("--bus")?;
            log::info!("node {node} on bus {url}");
            Box::new(bus)
        }
        other => bail!("unsupported --bus {other:?}: expected local or redis://host:port"),
    };
    let listener = TcpListener::bind(&args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    let server = Server::new(listener, config, store, bus).context("cannot start the node")?;
    let addr = server.local_addr()?;
    let handle = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            log::info!("signal {sig}: shutting down");
            handle.shutdown();
        }
    });
    // Scripts and tests read the bound address from this line (useful with port 0).
    println!("listening on {addr}");
    Ok(server.run()?)
}

fn random_node_id() -> String {
    let mut bytes = [0u8; 6];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No entropy source: the process id and the clock still tell nodes apart.
        return format!("{}-{}", std::process::id(), chat::proto::time::now_ms());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
