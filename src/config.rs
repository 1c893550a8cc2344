//! Tunables of one node. Every limit that protects the node from its clients lives here.

use std::time::Duration;

use crate::proto::time::Clock;

/// Node configuration; `Config::default()` is what `chatserver` runs with when given no flags.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker reactors (each one thread with its own `mio::Poll`).
    pub threads: usize,
    /// Threads of the blocking pool (store, bus and password hashing).
    pub pool_threads: usize,
    /// Requests queued on the pool beyond which new ones get errno 10 at once.
    pub pool_queue: usize,
    /// Largest request frame, in bytes of one JSON value.
    pub max_frame: usize,
    /// Largest request frame of a connection not logged in.
    pub max_frame_before_login: usize,
    /// A connection not logged in for this long (since it opened or logged out) is closed;
    /// zero never closes one.
    pub login_timeout: Duration,
    /// Most connections the node holds; more are reset at once. Zero: no limit but the
    /// open-file limit.
    pub max_connections: usize,
    /// Most connections from one source address; zero: no limit (behind a proxy every
    /// client has the proxy's address).
    pub max_conns_per_ip: usize,
    /// Every connection starts with a PROXY header (v1 or v2, from nginx's `proxy_protocol
    /// on`) naming the client's address; one without a valid header is closed.
    pub proxy_protocol: bool,
    /// Failed logins and registrations allowed before errno 14 (see `service/throttle.rs`).
    pub throttle: ThrottleLimits,
    /// Largest `msg` of a chat, in bytes.
    pub max_msg: usize,
    /// Largest outbound queue of one connection; a reader slower than that is cut off.
    pub max_outbound: usize,
    /// Largest offline mailbox of one user, in messages.
    pub mailbox_cap: usize,
    /// Argon2id cost of password hashes.
    pub hash: HashCost,
    /// How long shutdown waits for in-flight work and for output to flush, per phase.
    pub shutdown_grace: Duration,
    /// Where `ts` comes from.
    pub clock: Clock,
    /// Days of history kept in the message log; 0 keeps everything.
    pub history_days: u32,
    /// Most unacknowledged deliveries of an acks session.
    pub window: usize,
    /// An acks session whose deliveries stay unacknowledged this long is ended (a connection
    /// that died silently, or a client that stopped acknowledging); zero never ends one.
    pub ack_timeout: Duration,
    /// How often stored messages of live users are looked for, in case their notification
    /// was lost; such a message arrives within about two periods.
    pub sweep_every: Duration,
}

/// Failed logins (counted over 10 minutes, then refused for 15) and registrations (counted
/// over an hour, then refused for one) allowed before errno 14; 0 turns a limit off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThrottleLimits {
    /// Failed logins of one account.
    pub login_failures: u32,
    /// Failed logins from one source address (off by default: behind a proxy every client
    /// has the proxy's address).
    pub login_failures_per_ip: u32,
    /// Registrations from one source address.
    pub registrations_per_ip: u32,
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for HashCost {
    /// The OWASP-recommended minimum for argon2id: 19 MiB, 2 passes.
    fn default() -> Self {
        HashCost { memory_kib: 19 * 1024, iterations: 2 }
    }
}

impl Config {
    /// Threads that write offline mailboxes, each in order (see `service/mailbox.rs`).
    pub fn mailbox_lanes(&self) -> usize {
        self.pool_threads.div_ceil(2).max(1)
    }

    /// Store connections the node can use at once: one per pool thread and mailbox lane, so
    /// none of them waits for another to give a connection back.
    pub fn store_connections(&self) -> usize {
        self.pool_threads + self.mailbox_lanes()
    }
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            threads: cores,
            pool_threads: 2 * cores,
            pool_queue: 4096,
            max_frame: 64 * 1024,
            max_frame_before_login: 8 * 1024,
            login_timeout: Duration::from_secs(600),
            max_connections: 0,
            max_conns_per_ip: 0,
            proxy_protocol: false,
            throttle: ThrottleLimits { login_failures: 20, login_failures_per_ip: 0, registrations_per_ip: 0 },
            max_msg: 16 * 1024,
            max_outbound: 4 * 1024 * 1024,
            mailbox_cap: 10_000,
            hash: HashCost::default(),
            shutdown_grace: Duration::from_millis(700),
            clock: Clock::System,
            history_days: 30,
            window: 1000,
            ack_timeout: Duration::from_secs(30),
            sweep_every: Duration::from_secs(2),
        }
    }
}
