//! `chatbench integrity`: does every acknowledged message arrive, once, in order, while faults
//! happen? `users` users log in (with acks unless told otherwise) over the given addresses and
//! send paced one-to-one messages to random partners, each with a `cid`, one in flight per
//! user. Every user survives its connection: on a reset, a close, or an answer that does not
//! come, it connects again (trying the next address each time), logs in, and sends the
//! unanswered message again under the same `cid`. With `rst_every`, the users themselves reset
//! their connections (one every period, `SO_LINGER` 0). With `blackhole_every`, every user
//! connects through its own in-process proxy, and one path every period goes silent both ways
//! with both sockets kept open: the user notices only when the proxy finally resets its side
//! (after `blackhole_for`); the server's side stays open and silent until the end of the run
//! (canonical sessions: it is reset when the user gives up, since only TCP could tell such a
//! server). With `faults`, shell commands the caller gives (kill -9 a node and start it again,
//! restart Redis…) run one every `fault_every`, in turn, while messages are sent.
//!
//! A real blackhole acknowledges nothing, but the proxy's kernel acknowledges what the server
//! sent until its receive buffer is full. An acks session loses none of it (the client never
//! acknowledged it); a canonical session counts it as delivered, as it must count anything the
//! peer's TCP stack acknowledged. So the proxy keeps those bytes, and a canonical message lost
//! among them is reported apart (`lost_in_proxy`): lost to the test's middlebox, not to a
//! network that went silent.
//!
//! After the send phase, everyone reads until nothing arrives for a while (or `drain` passes),
//! and the run is judged as Jepsen's queue checker does:
//! - acknowledged: the sender got errno 0 and a mid;
//! - delivered: reached its recipient (counted once per message, after dropping repeated mids,
//!   as a client does);
//! - **lost**: acknowledged, never delivered; **unexpected**: delivered, never sent (or to the
//!   wrong user); **duplicated**: one sent message delivered under two mids; recovered:
//!   delivered though its answer never came;
//! - order violations: a recipient saw a sender's messages out of the order they were sent.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, ErrorKind, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use super::err;

/// How long a read waits before the loop looks at its clocks again.
const TICK: Duration = Duration::from_millis(20);
/// An answer that takes longer means the connection is dead (say, blackholed).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);
/// The drain ends once nothing has arrived for this long and nothing is unanswered.
const QUIET: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct IntegrityPlan {
    pub addrs: Vec<String>,
    pub users: usize,
    /// How long messages are sent.
    pub duration: Duration,
    /// Messages per second, all users together.
    pub rate: f64,
    /// Most time the drain may take after the send phase.
    pub drain: Duration,
    /// Acknowledged sessions (msgid 12); without, canonical sessions.
    pub acks: bool,
    /// One user resets its connection every period.
    pub rst_every: Option<Duration>,
    /// One user's path goes silent every period...
    pub blackhole_every: Option<Duration>,
    /// ...for this long, before the user learns its connection is gone.
    pub blackhole_for: Duration,
    /// Shell commands, run in turn, one every `fault_every` during the send phase.
    pub faults: Vec<String>,
    pub fault_every: Duration,
    pub progress: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct IntegrityReport {
    pub attempted: usize,
    pub acknowledged: usize,
    pub delivered: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub duplicated: usize,
    pub recovered: usize,
    pub order_violations: usize,
    /// Messages the server refused with an errno other than 10 (tried again).
    pub refused: usize,
    pub reconnects: usize,
    pub resets: usize,
    /// Paths that went silent.
    pub blackholes: usize,
    /// Fault commands run, and how many of them failed (exited non-zero or could not start).
    pub faults: usize,
    pub faults_failed: usize,
    /// Lost messages that a silenced path's proxy had acknowledged over TCP and never passed on
    /// (canonical sessions only; part of `lost`).
    pub lost_in_proxy: usize,
    /// Up to 10 lost messages, `sender:n`, for a look in the history.
    pub lost_examples: Vec<String>,
}

impl IntegrityReport {
    /// Whether the run found nothing wrong.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.unexpected == 0 && self.duplicated == 0 && self.order_violations == 0
    }
}

/// What the users share while they run.
#[derive(Debug)]
struct Shared {
    plan: IntegrityPlan,
    ids: Vec<u32>,
    start: Instant,
    /// Milliseconds since `start` of the last delivery anyone received.
    last_delivery_ms: AtomicU64,
    /// Users with a message sent and not answered.
    unanswered: AtomicUsize,
    /// Milliseconds since `start` of the next reset.
    next_reset_ms: AtomicU64,
    /// Milliseconds since `start` of the next blackhole.
    next_blackhole_ms: AtomicU64,
    /// Server-side sockets of blackholed paths, held open until the run ends.
    dead_paths: parking_lot::Mutex<Vec<TcpStream>>,
    acknowledged: AtomicUsize,
    delivered: AtomicUsize,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// One message as its sender saw it.
#[derive(Debug, Clone)]
struct Attempt {
    to: usize,
    mid: Option<u64>,
}

/// What one user did and saw.
#[derive(Debug, Default)]
struct Tally {
    sent: Vec<Attempt>,
    /// (sender id, text, mid) in arrival order.
    got: Vec<(u32, String, Option<u64>)>,
    /// (sender id, text) of messages to this user a silenced proxy acknowledged and kept.
    swallowed: Vec<(u32, String)>,
    refused: usize,
    reconnects: usize,
    resets: usize,
    blackholes: usize,
}

/// Runs the plan; errors only if the users cannot even sign up.
pub fn integrity(plan: &IntegrityPlan) -> io::Result<IntegrityReport> {
    if plan.addrs.is_empty() || plan.users < 2 {
        return Err(err("integrity needs an address and at least 2 users"));
    }
    let tag = format!("i{}", crate::proto::time::now_ms());
    let mut ids = Vec::with_capacity(plan.users);
    for i in 0..plan.users {
        let mut c = Conn::open(&plan.addrs[i % plan.addrs.len()])?;
        let r = c.request(&json!({"msgid":4,"name":format!("{tag}-{i}"),"password":"pw"}))?;
        let id = r["id"].as_u64().filter(|_| r["errno"] == 0).ok_or_else(|| err(format!("register: {r}")))?;
        ids.push(id as u32);
    }
    let shared = Arc::new(Shared {
        plan: plan.clone(),
        ids,
        start: Instant::now(),
        last_delivery_ms: AtomicU64::new(0),
        unanswered: AtomicUsize::new(0),
        next_reset_ms: AtomicU64::new(plan.rst_every.map_or(u64::MAX, |p| p.as_millis() as u64)),
        next_blackhole_ms: AtomicU64::new(plan.blackhole_every.map_or(u64::MAX, |p| p.as_millis() as u64)),
        dead_paths: parking_lot::Mutex::new(Vec::new()),
        acknowledged: AtomicUsize::new(0),
        delivered: AtomicUsize::new(0),
    });
    let workers: Vec<thread::JoinHandle<Tally>> = (0..plan.users)
        .map(|i| {
            let shared = shared.clone();
            thread::Builder::new().name(format!("integrity-{i}")).spawn(move || User::new(i, &shared).run())
        })
        .collect::<io::Result<_>>()?;
    let faults = {
        let shared = shared.clone();
        thread::Builder::new().name("integrity-faults".into()).spawn(move || inject_faults(&shared))?
    };
    let bar = progress(plan);
    while !workers.iter().all(|w| w.is_finished()) {
        bar.set_message(format!(
            "acknowledged {} delivered {}",
            shared.acknowledged.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed)
        ));
        bar.set_position(shared.start.elapsed().as_secs());
        thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
    shared.dead_paths.lock().clear();
    let tallies: Vec<Tally> = workers.into_iter().map(|w| w.join().unwrap_or_default()).collect();
    let mut report = judge(&shared.ids, &tallies);
    (report.faults, report.faults_failed) = faults.join().unwrap_or_default();
    Ok(report)
}

/// Runs the plan's fault commands in turn, one every `fault_every`, until the send phase ends;
/// returns how many ran and how many failed.
fn inject_faults(shared: &Shared) -> (usize, usize) {
    let plan = &shared.plan;
    let (mut ran, mut failed) = (0, 0);
    if plan.faults.is_empty() {
        return (ran, failed);
    }
    let mut next = plan.fault_every;
    while next < plan.duration {
        thread::sleep(next.saturating_sub(shared.start.elapsed()));
        let command = &plan.faults[ran % plan.faults.len()];
        let status = std::process::Command::new("sh").arg("-c").arg(command).status();
        if !status.as_ref().is_ok_and(|s| s.success()) {
            log::warn!("fault `{command}` failed: {status:?}");
            failed += 1;
        }
        ran += 1;
        next += plan.fault_every;
    }
    (ran, failed)
}

fn progress(plan: &IntegrityPlan) -> indicatif::ProgressBar {
    if !plan.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new((plan.duration + plan.drain).as_secs());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// The verdict over what every user sent and saw.
fn judge(ids: &[u32], tallies: &[Tally]) -> IntegrityReport {
    let index: HashMap<u32, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    let mut r = IntegrityReport::default();
    for t in tallies {
        r.attempted += t.sent.len();
        r.acknowledged += t.sent.iter().filter(|a| a.mid.is_some()).count();
        r.refused += t.refused;
        r.reconnects += t.reconnects;
        r.resets += t.resets;
        r.blackholes += t.blackholes;
    }
    // (sender, n) of every message that reached its recipient.
    let mut delivered: HashSet<(usize, usize)> = HashSet::new();
    for (me, t) in tallies.iter().enumerate() {
        let mut mids = HashSet::new();
        let mut last_n: HashMap<usize, usize> = HashMap::new();
        for (from, text, mid) in &t.got {
            if mid.is_some_and(|m| !mids.insert(m)) {
                continue; // a redelivery under the same mid: the client drops it
            }
            let parsed =
                text.split_once(':').and_then(|(s, n)| Some((s.parse::<usize>().ok()?, n.parse::<usize>().ok()?)));
            let Some((sender, n)) = parsed.filter(|&(s, n)| {
                index.get(from) == Some(&s) && tallies[s].sent.get(n).is_some_and(|a: &Attempt| a.to == me)
            }) else {
                r.unexpected += 1;
                continue;
            };
            if !delivered.insert((sender, n)) {
                r.duplicated += 1;
                continue;
            }
            if last_n.insert(sender, n).is_some_and(|prev| prev > n) {
                r.order_violations += 1;
            }
        }
    }
    r.delivered = delivered.len();
    let mut swallowed: HashSet<(usize, usize)> = HashSet::new();
    for t in tallies {
        for (from, text) in &t.swallowed {
            if let (Some(&s), Some((sender, n))) = (index.get(from), text.split_once(':')) {
                if let (Ok(sender), Ok(n)) = (sender.parse::<usize>(), n.parse::<usize>()) {
                    swallowed.extend((sender == s).then_some((s, n)));
                }
            }
        }
    }
    for (s, t) in tallies.iter().enumerate() {
        for (n, a) in t.sent.iter().enumerate() {
            match (a.mid.is_some(), delivered.contains(&(s, n))) {
                (true, false) => {
                    r.lost += 1;
                    r.lost_in_proxy += usize::from(swallowed.contains(&(s, n)));
                    if r.lost_examples.len() < 10 {
                        r.lost_examples.push(format!("{s}:{n}"));
                    }
                }
                (false, true) => r.recovered += 1,
                _ => {}
            }
        }
    }
    r
}

/// A blocking connection read a line at a time, with short reads so the user's loop runs on.
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    partial: Vec<u8>,
    /// The path through a proxy, when blackholes are planned.
    path: Option<Path>,
}

impl Conn {
    fn open(addr: &str) -> io::Result<Conn> {
        Conn::over(TcpStream::connect(addr)?, None)
    }

    /// Connects through a proxy of our own, whose path can be made to go silent.
    fn open_proxied(addr: &str) -> io::Result<Conn> {
        let (stream, path) = Path::open(addr)?;
        Conn::over(stream, Some(path))
    }

    fn over(stream: TcpStream, path: Option<Path>) -> io::Result<Conn> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(TICK))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Conn { stream, reader, partial: Vec::new(), path })
    }

    fn send(&mut self, v: &Value) -> io::Result<()> {
        let mut line = v.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes())
    }

    /// The next line, or `None` if none is complete within a tick.
    fn line(&mut self) -> io::Result<Option<Value>> {
        match self.reader.read_until(b'\n', &mut self.partial) {
            Ok(0) => Err(ErrorKind::UnexpectedEof.into()),
            Ok(_) if self.partial.ends_with(b"\n") => {
                let v = serde_json::from_slice(&self.partial).map_err(|e| err(format!("a bad line: {e}")));
                self.partial.clear();
                v.map(Some)
            }
            Ok(_) => Err(ErrorKind::UnexpectedEof.into()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends `v` and waits (up to the answer timeout) for the next line.
    fn request(&mut self, v: &Value) -> io::Result<Value> {
        self.send(v)?;
        let t = Instant::now();
        loop {
            if let Some(v) = self.line()? {
                return Ok(v);
            }
            if t.elapsed() > ANSWER_TIMEOUT {
                return Err(err("no answer"));
            }
        }
    }

    /// Closes with a reset instead of a FIN.
    fn reset(self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// A proxied path: client ⇄ proxy ⇄ server, two forwarding threads that stop forwarding (and
/// reading) once the path is silenced, leaving every socket open.
struct Path {
    silent: Arc<std::sync::atomic::AtomicBool>,
    /// The proxy's socket to the server.
    upstream: TcpStream,
    /// The proxy's socket to the client.
    downstream: TcpStream,
    /// Bytes from the server the proxy read but did not pass on, once silenced.
    kept: Arc<parking_lot::Mutex<Vec<u8>>>,
}

impl Path {
    fn open(addr: &str) -> io::Result<(TcpStream, Path)> {
        let upstream = TcpStream::connect(addr)?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (downstream, _) = listener.accept()?;
        upstream.set_nodelay(true)?;
        downstream.set_nodelay(true)?;
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kept = Arc::new(parking_lot::Mutex::new(Vec::new()));
        for (from, to, keep) in [
            (upstream.try_clone()?, downstream.try_clone()?, Some(kept.clone())),
            (downstream.try_clone()?, upstream.try_clone()?, None),
        ] {
            let silent = silent.clone();
            from.set_read_timeout(Some(TICK))?;
            thread::Builder::new()
                .name("integrity-proxy".into())
                .spawn(move || forward(from, to, &silent, keep.as_deref()))?;
        }
        Ok((client, Path { silent, upstream, downstream, kept }))
    }

    /// Everything from the server the proxy acknowledged and never passed on: what it read
    /// once silenced, then what waits in its socket's receive buffer. That is peeked, not read,
    /// so the window stays shut and the server's kernel sends nothing more before the reset.
    fn swallowed(&self) -> Vec<u8> {
        let mut bytes = std::mem::take(&mut *self.kept.lock());
        let mut buf = vec![0; 32 << 20]; // beyond any receive buffer
        if self.upstream.set_nonblocking(true).is_ok() {
            if let Ok(n) = self.upstream.peek(&mut buf) {
                bytes.extend_from_slice(&buf[..n]);
            }
        }
        bytes
    }
}

/// Copies `from` to `to` until either ends or the path goes silent; bytes read as it goes
/// silent go to `keep`, if given.
fn forward(
    mut from: TcpStream,
    mut to: TcpStream,
    silent: &std::sync::atomic::AtomicBool,
    keep: Option<&parking_lot::Mutex<Vec<u8>>>,
) {
    use std::io::Read;
    let mut buf = vec![0; 16 * 1024];
    while !silent.load(Ordering::Relaxed) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if !silent.load(Ordering::Relaxed) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Ok(n) => {
                // Silenced meanwhile: these bytes vanish, as on a dead path.
                if let Some(keep) = keep {
                    keep.lock().extend_from_slice(&buf[..n]);
                }
                break;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    if !silent.load(Ordering::Relaxed) {
        let _ = to.shutdown(std::net::Shutdown::Write);
    }
}

/// One simulated user.
struct User<'a> {
    me: usize,
    shared: &'a Shared,
    tally: Tally,
    conn: Option<Conn>,
    /// The message sent and not answered yet: (n, when sent).
    pending: Option<(usize, Instant)>,
    to_ack: Vec<u64>,
    rng: u64,
    attempts: usize,
    connected_once: bool,
    /// A silenced path and when the user gives up on it.
    silenced: Option<(Path, Instant)>,
}

impl<'a> User<'a> {
    fn new(me: usize, shared: &'a Shared) -> User<'a> {
        let rng = 0x9E37_79B9_7F4A_7C15 ^ (me as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        User {
            me,
            shared,
            tally: Tally::default(),
            conn: None,
            pending: None,
            to_ack: Vec::new(),
            rng,
            attempts: 0,
            connected_once: false,
            silenced: None,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn run(mut self) -> Tally {
        let plan = &self.shared.plan;
        let every = Duration::from_secs_f64(plan.users as f64 / plan.rate.max(0.001));
        let send_until = plan.duration;
        let deadline = plan.duration + plan.drain;
        // Spread the users' first sends over one period.
        let mut next_send = every.mul_f64((self.me as f64) / plan.users as f64);
        loop {
            let elapsed = self.shared.start.elapsed();
            if elapsed > deadline {
                break;
            }
            if elapsed > send_until && self.pending.is_none() && self.drained() {
                break;
            }
            if self.conn.is_none() && !self.connect() {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            let result = self.step(&mut next_send, every, send_until);
            if let Err(e) = result {
                log::debug!("user {}: {e}; connecting again", self.me);
                self.conn = None;
            }
        }
        if self.pending.take().is_some() {
            self.shared.unanswered.fetch_sub(1, Ordering::Relaxed);
        }
        self.tally
    }

    /// Nothing unanswered anywhere and nothing received for a while.
    fn drained(&self) -> bool {
        self.shared.unanswered.load(Ordering::Relaxed) == 0
            && self.shared.now_ms().saturating_sub(self.shared.last_delivery_ms.load(Ordering::Relaxed))
                > QUIET.as_millis() as u64
    }

    /// Connects and logs in (the next address each attempt); sends the unanswered message again.
    fn connect(&mut self) -> bool {
        let addrs = &self.shared.plan.addrs;
        let addr = &addrs[(self.me + self.attempts) % addrs.len()];
        self.attempts += 1;
        let opened = match self.shared.plan.blackhole_every {
            Some(_) => Conn::open_proxied(addr),
            None => Conn::open(addr),
        };
        let Ok(mut c) = opened else { return false };
        let id = self.shared.ids[self.me];
        let acks = self.shared.plan.acks;
        let Ok(ack) = c.request(&json!({"msgid":1,"id":id,"password":"pw","acks":acks})) else { return false };
        if ack["msgid"] != 2 || ack["errno"] != 0 {
            return false; // say, the old session has not ended yet
        }
        for stored in ack["offlinemsg"].as_array().into_iter().flatten() {
            if let Some(m) = stored.as_str().and_then(|s| serde_json::from_str::<Value>(s).ok()) {
                self.received(&m);
            }
        }
        self.tally.reconnects += usize::from(self.connected_once);
        self.connected_once = true;
        self.conn = Some(c);
        if let Some((n, _)) = self.pending {
            if self.send_chat(n).is_err() {
                self.conn = None;
                return false;
            }
        }
        true
    }

    /// One turn: send if it is time, read what came, acknowledge it, reset if it is our turn.
    fn step(&mut self, next_send: &mut Duration, every: Duration, send_until: Duration) -> io::Result<()> {
        let elapsed = self.shared.start.elapsed();
        if self.pending.is_none() && elapsed >= *next_send && elapsed < send_until {
            let n = self.tally.sent.len();
            let others = self.shared.plan.users - 1;
            let to = (self.me + 1 + (self.random() as usize % others)) % self.shared.plan.users;
            self.tally.sent.push(Attempt { to, mid: None });
            self.shared.unanswered.fetch_add(1, Ordering::Relaxed);
            self.pending = Some((n, Instant::now()));
            *next_send += every;
            self.send_chat(n)?;
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        let line = conn.line()?;
        if let Some(v) = line {
            self.handle(&v)?;
        }
        if !self.to_ack.is_empty() {
            let mids = std::mem::take(&mut self.to_ack);
            if let Some(c) = self.conn.as_mut() {
                c.send(&json!({"msgid":12,"mids":mids}))?;
            }
        }
        if self.pending.is_some_and(|(_, at)| at.elapsed() > ANSWER_TIMEOUT) {
            return Err(err("an answer did not come"));
        }
        if elapsed < send_until {
            self.maybe_reset();
            self.maybe_blackhole();
        }
        self.give_up_silent_path()
    }

    /// When a blackhole is due, the first user to notice has its path go silent.
    fn maybe_blackhole(&mut self) {
        let Some(period) = self.shared.plan.blackhole_every else { return };
        if self.silenced.is_some() || !matches!(&self.conn, Some(c) if c.path.is_some()) {
            return;
        }
        let now = self.shared.now_ms();
        let due = self.shared.next_blackhole_ms.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now + period.as_millis() as u64;
        if self.shared.next_blackhole_ms.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            if let Some(path) = self.conn.as_mut().and_then(|c| c.path.take()) {
                path.silent.store(true, Ordering::Relaxed);
                self.silenced = Some((path, Instant::now() + self.shared.plan.blackhole_for));
                self.tally.blackholes += 1;
            }
        }
    }

    /// After `blackhole_for` the user learns its silent connection is gone (the proxy resets
    /// the user's side) and connects again; the server's side stays open, silent.
    fn give_up_silent_path(&mut self) -> io::Result<()> {
        if !self.silenced.as_ref().is_some_and(|(_, at)| Instant::now() >= *at) {
            return Ok(());
        }
        let Some((path, _)) = self.silenced.take() else { return Ok(()) };
        if !self.shared.plan.acks {
            // The stream as the server sent it: the line the user had begun, then the rest.
            let mut bytes = self.conn.as_mut().map(|c| std::mem::take(&mut c.partial)).unwrap_or_default();
            bytes.extend(path.swallowed());
            self.note_swallowed(&bytes);
        }
        let _ = socket2::SockRef::from(&path.downstream).set_linger(Some(Duration::ZERO));
        drop(path.downstream);
        if self.shared.plan.acks {
            self.shared.dead_paths.lock().push(path.upstream);
        } else {
            let _ = socket2::SockRef::from(&path.upstream).set_linger(Some(Duration::ZERO));
        }
        Err(err("the path went silent"))
    }

    /// Keeps the chat messages among bytes a silenced proxy swallowed.
    fn note_swallowed(&mut self, bytes: &[u8]) {
        for line in bytes.split(|&b| b == b'\n') {
            match serde_json::from_slice::<Value>(line) {
                Ok(m) if m["msgid"] == 6 => self
                    .tally
                    .swallowed
                    .push((m["id"].as_u64().unwrap_or(0) as u32, m["msg"].as_str().unwrap_or("").to_owned())),
                _ => {} // an answer, or the unfinished last line the server did not count as sent
            }
        }
    }

    fn send_chat(&mut self, n: usize) -> io::Result<()> {
        let Some(a) = self.tally.sent.get(n) else { return Ok(()) };
        let (to, me) = (self.shared.ids[a.to], self.me);
        let text = format!("{me}:{n}");
        let request = json!({"msgid":6,"toid":to,"msg":text,"time":"t","cid":text,"seq":n});
        if let Some((_, at)) = self.pending.as_mut() {
            *at = Instant::now();
        }
        match self.conn.as_mut() {
            Some(c) => c.send(&request),
            None => Ok(()),
        }
    }

    fn handle(&mut self, v: &Value) -> io::Result<()> {
        match (v["msgid"].as_u64(), v["req"].as_u64()) {
            (Some(6), _) => self.received(v),
            (Some(11), Some(6)) => {
                let Some((n, _)) = self.pending else { return Ok(()) };
                if v["seq"].as_u64() != Some(n as u64) {
                    return Ok(()); // the answer to an earlier copy: the next one follows
                }
                match (v["errno"].as_u64(), v["mid"].as_u64()) {
                    (Some(0), Some(mid)) => {
                        self.tally.sent[n].mid = Some(mid);
                        self.shared.acknowledged.fetch_add(1, Ordering::Relaxed);
                        self.settle();
                    }
                    (Some(10), _) => {
                        thread::sleep(Duration::from_millis(100));
                        self.send_chat(n)?; // unavailable: the same cid again
                    }
                    _ => {
                        self.tally.refused += 1;
                        self.settle();
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn settle(&mut self) {
        if self.pending.take().is_some() {
            self.shared.unanswered.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn received(&mut self, m: &Value) {
        let from = m["id"].as_u64().unwrap_or(0) as u32;
        let text = m["msg"].as_str().unwrap_or("").to_owned();
        let mid = m["mid"].as_u64();
        if let Some(mid) = mid.filter(|_| self.shared.plan.acks) {
            self.to_ack.push(mid);
        }
        self.tally.got.push((from, text, mid));
        self.shared.delivered.fetch_add(1, Ordering::Relaxed);
        self.shared.last_delivery_ms.store(self.shared.now_ms(), Ordering::Relaxed);
    }

    /// When a reset is due, the first user to notice resets its connection.
    fn maybe_reset(&mut self) {
        let Some(period) = self.shared.plan.rst_every else { return };
        let now = self.shared.now_ms();
        let due = self.shared.next_reset_ms.load(Ordering::Relaxed);
        if now < due {
            return;
        }
        let next = now + period.as_millis() as u64;
        if self.shared.next_reset_ms.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            if let Some(c) = self.conn.take() {
                c.reset();
                self.tally.resets += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(sent: &[(usize, Option<u64>)], got: &[(u32, &str, Option<u64>)]) -> Tally {
        Tally {
            sent: sent.iter().map(|&(to, mid)| Attempt { to, mid }).collect(),
            got: got.iter().map(|&(f, t, m)| (f, t.to_owned(), m)).collect(),
            ..Tally::default()
        }
    }

    #[test]
    fn the_verdict_counts_each_category() {
        let ids = [10, 11];
        // User 0 sent four to user 1: 0 and 1 acknowledged and delivered (1 twice under one mid,
        // a redelivery), 2 acknowledged and lost, 3 unanswered yet delivered (recovered).
        let a = tally(&[(1, Some(100)), (1, Some(101)), (1, Some(102)), (1, None)], &[]);
        let b = tally(
            &[],
            &[
                (10, "0:0", Some(100)),
                (10, "0:1", Some(101)),
                (10, "0:1", Some(101)),
                (10, "0:3", Some(103)),
                (10, "0:0", Some(104)), // a second mid for one message
                (11, "0:0", Some(105)), // from the wrong sender
                (10, "0:9", Some(106)), // never sent
            ],
        );
        // The lost one was in a silenced proxy's buffer (and so, from the wrong sender, was 0:0).
        let b = Tally { swallowed: vec![(10, "0:2".into()), (11, "0:0".into())], ..b };
        let r = judge(&ids, &[a, b]);
        assert_eq!((r.attempted, r.acknowledged, r.delivered), (4, 3, 3));
        assert_eq!(r.lost_in_proxy, 1);
        assert_eq!((r.lost, r.recovered, r.duplicated, r.unexpected), (1, 1, 1, 2));
        assert_eq!(r.lost_examples, ["0:2"]);
        assert_eq!(r.order_violations, 0);
        assert!(!r.ok());
    }

    #[test]
    fn a_sender_s_messages_out_of_order_are_a_violation() {
        let a = tally(&[(1, Some(1)), (1, Some(2))], &[]);
        let b = tally(&[], &[(10, "0:1", Some(2)), (10, "0:0", Some(1))]);
        let r = judge(&[10, 11], &[a, b]);
        assert_eq!((r.delivered, r.lost, r.order_violations), (2, 0, 1));
    }
}
