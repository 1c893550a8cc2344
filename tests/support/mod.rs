//! Test support: real servers on port 0 with a private store, and a raw protocol client.
//!
//! The store is a fresh SQLite file, or with `CHAT_TEST_STORE=mysql` a fresh database on a
//! private MariaDB started for this test process: the same tests run against both.
#![allow(dead_code)]

pub mod mariadb;
pub mod nginx;
pub mod redis;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chat::bus::LocalBus;
use chat::config::HashCost;
use chat::{Config, Server, ShutdownHandle};
use serde_json::{json, Value};

/// Cheap hashes keep tests fast; the default cost is covered by the binary tests.
pub const TEST_HASH: HashCost = HashCost { memory_kib: 256, iterations: 1 };
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn test_config() -> Config {
    Config { threads: 2, pool_threads: 4, hash: TEST_HASH, ..Config::default() }
}

/// A fresh, empty store, as a `--store` spec: a file in `dir`, or a database on MariaDB.
pub fn fresh_store(dir: &Path) -> String {
    match std::env::var("CHAT_TEST_STORE").as_deref() {
        Ok("mysql") => mariadb::MariaDb::shared().fresh_database(),
        Ok("sqlite") | Err(_) => format!("sqlite:{}", dir.join("chat.db").display()),
        Ok(other) => panic!("CHAT_TEST_STORE={other}: expected sqlite or mysql"),
    }
}

/// A server running in this process on its own threads; shut down and joined on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The `--store` spec, to restart on the same data or to inspect it.
    pub store: String,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Self::start_on(&fresh_store(dir.path()), tweak);
        s._dir = Some(dir);
        s
    }

    /// A server on an existing store (for restarts); the caller keeps its directory.
    pub fn start_on(store_spec: &str, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        tweak(&mut config);
        let store = chat::store::open(store_spec, config.store_connections()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = Server::new(listener, config, store, Box::new(LocalBus)).unwrap();
        let addr = server.local_addr().unwrap();
        let handle = server.shutdown_handle();
        let thread = Some(std::thread::spawn(move || server.run()));
        TestServer { addr, store: store_spec.to_owned(), handle, thread, _dir: None }
    }

    /// Shuts down gracefully and waits; returns how long it took.
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        self.handle.shutdown();
        if let Some(th) = self.thread.take() {
            th.join().unwrap().unwrap();
        }
        t.elapsed()
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Runs a statement directly on the server's database, behind its back.
    pub fn sql_exec(&self, sql: &str) {
        sql_exec(&self.store, sql);
    }

    /// The first column of a query on the server's database, as strings.
    pub fn sql_strings(&self, query: &str) -> Vec<String> {
        match self.store.strip_prefix("sqlite:") {
            Some(path) => {
                let db = rusqlite::Connection::open(path).unwrap();
                let mut st = db.prepare(query).unwrap();
                st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
            }
            None => {
                use mysql::prelude::Queryable;
                mysql::Conn::new(mysql::Opts::from_url(&self.store).unwrap()).unwrap().query(query).unwrap()
            }
        }
    }

    /// A registered, logged-in user: (client, id).
    pub fn user(&self, name: &str) -> (Client, u32) {
        let mut c = self.client();
        let id = c.register(name, "pw");
        c.login_ok(id, "pw");
        (c, id)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
        }
    }
}

pub fn sql_exec(store: &str, sql: &str) {
    match store.strip_prefix("sqlite:") {
        Some(path) => rusqlite::Connection::open(path).unwrap().execute_batch(sql).unwrap(),
        None => {
            use mysql::prelude::Queryable;
            mysql::Conn::new(mysql::Opts::from_url(store).unwrap()).unwrap().query_drop(sql).unwrap()
        }
    }
}

/// The `chatserver` binary as a child process; killed on drop.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    pub fn spawn(store: &str, extra: &[&str]) -> ServerProcess {
        Self::spawn_on("127.0.0.1:0", store, extra)
    }

    /// As `spawn`, listening on `listen` (to restart a node where its clients look for it).
    pub fn spawn_on(listen: &str, store: &str, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chatserver"))
            .args(["--listen", listen, "--threads", "2", "--hash-memory-kib", "256", "--hash-iterations", "1"])
            .args(["--store", store])
            .args(extra)
            .env("RUST_LOG", std::env::var("CHAT_TEST_LOG").unwrap_or("warn".into()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("bad banner {line:?}"));
        ServerProcess { addr: addr.parse().unwrap(), child }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args(["-s", sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill -s {sig} failed");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client speaking raw protocol: JSON lines out, JSON lines in.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::from_stream(TcpStream::connect(addr).unwrap())
    }

    /// Connected from the loopback address `source` (e.g. 127.0.0.2): a client of its own.
    pub fn connect_from(addr: SocketAddr, source: std::net::Ipv4Addr) -> Client {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::from((source, 0)).into()).unwrap();
        socket.connect(&addr.into()).unwrap();
        Self::from_stream(socket.into())
    }

    fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    pub fn send(&mut self, v: Value) {
        self.send_raw(format!("{v}\n").as_bytes());
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next message; panics after `TIMEOUT`.
    pub fn recv(&mut self) -> Value {
        self.try_recv(TIMEOUT).expect("no message from the server in time")
    }

    /// The next raw line, newline included.
    pub fn recv_line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line
    }

    pub fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        let (r, line) = self.line_within(wait);
        match r {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap_or_else(|e| {
                let head: String = line.chars().take(200).collect();
                panic!("bad line of {} bytes {head:?}…: {e}", line.len())
            })),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// The next message within `wait`; `None` on a timeout, a close or a reset (a refused
    /// connection), where `try_recv` would panic on the reset.
    pub fn answer_within(&mut self, wait: Duration) -> Option<Value> {
        match self.line_within(wait) {
            (Ok(n), line) if n > 0 => serde_json::from_str(&line).ok(),
            _ => None,
        }
    }

    /// One line read with `wait` as the timeout (then the usual one again).
    fn line_within(&mut self, wait: Duration) -> (std::io::Result<usize>, String) {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut line = String::new();
        let r = self.reader.read_line(&mut line);
        self.stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        (r, line)
    }

    /// Asserts nothing arrives for a while.
    pub fn expect_silence(&mut self, wait: Duration) {
        if let Some(v) = self.try_recv(wait) {
            panic!("unexpected message {v}");
        }
    }

    /// Whether the server closed the connection (EOF or reset) within `TIMEOUT`.
    pub fn is_closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        }
    }

    pub fn request(&mut self, v: Value) -> Value {
        self.send(v);
        self.recv()
    }

    pub fn register(&mut self, name: &str, password: &str) -> u32 {
        let r = self.request(json!({"msgid":4,"name":name,"password":password}));
        assert_eq!(r["errno"], 0, "register {name}: {r}");
        r["id"].as_u64().unwrap() as u32
    }

    pub fn login(&mut self, id: u32, password: &str) -> Value {
        self.request(json!({"msgid":1,"id":id,"password":password}))
    }

    pub fn login_ok(&mut self, id: u32, password: &str) -> Value {
        let r = self.login(id, password);
        assert_eq!(r["errno"], 0, "login {id}: {r}");
        r
    }

    /// Logs out and waits until the session has ended.
    pub fn logout(&mut self) {
        assert_eq!(self.request(json!({"msgid":3,"seq":"logout"}))["errno"], 0);
    }

    /// Sends a one-to-one chat with a `seq` and waits for its ack.
    pub fn chat_acked(&mut self, me: u32, to: u32, msg: &str, seq: u64) {
        let mut ack = self.request(json!({"msgid":6,"id":me,"toid":to,"msg":msg,"time":"t","seq":seq}));
        let mid = ack.as_object_mut().and_then(|a| a.remove("mid"));
        assert_eq!(ack, json!({"msgid":11,"req":6,"seq":seq,"errno":0}));
        assert!(mid.and_then(|m| m.as_u64()).is_some_and(|m| m > 0), "the ack carries the message's mid");
    }
}

/// Parses the login ack's list of JSON-encoded strings.
pub fn decoded(ack: &Value, key: &str) -> Vec<Value> {
    ack[key]
        .as_array()
        .map_or(Vec::new(), |a| a.iter().map(|s| serde_json::from_str(s.as_str().unwrap()).unwrap()).collect())
}

/// A free port below the ephemeral range, so no client connection takes it while the node
/// listening there is down (for restarts on the same address).
pub fn stable_port() -> u16 {
    let seed = std::process::id() as u16;
    (0..2000u16)
        .map(|i| 20_000 + seed.wrapping_add(i.wrapping_mul(7)) % 10_000)
        .find(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port")
}

/// Retries `f` until it returns `Some`, for at most `TIMEOUT`.
pub fn eventually<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < TIMEOUT, "condition not reached in time");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Resident memory of a process, KiB, from `/proc`.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}
