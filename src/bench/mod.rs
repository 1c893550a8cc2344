//! The load generator behind `chatbench`: signs users up over real TCP and drives chat traffic
//! between them, against the chat server, the bare relay baseline (([`relay`])) or
//! Redis pub/sub (the peer baseline), with the same code timing all three.
//!
//! Users `2k` and `2k+1` form pair `k`; user `i` connects to `addrs[i % addrs.len()]`, so with
//! two nodes every pair spans both. Message bodies carry the send time, so receivers measure
//! one-way latency on the same clock.
//! - `pingpong`: one message in flight per pair; the receiver answers, the sender sends again.
//! - `flood`: each sender keeps up to `window` messages in flight (acked with `seq`).
//! - `fanout`: `pairs` groups of `members` users; the first member of each sends to the group,
//!   up to `window` messages in flight; every other member counts and times its deliveries.
//!
//! With `rate`, senders pace themselves to that many messages per second in total.
//!
//! `pingpong` and `fanout` run every user on a few event loops (one per core, `events.rs`):
//! with a thread per user, hundreds of users on the server's own cores measured the
//! generator's thread wake-ups. `flood`, with fewer users each busy, keeps a thread per user.

mod events;
pub mod integrity;
mod link;
pub mod logins;
pub mod relay;

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::proto::Request;

pub use link::{body, err, send_proxy_header, ChatLink, Delivered, Link, RedisLink};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    PingPong,
    Flood { window: usize },
    Fanout { members: usize, window: usize },
}

/// What the generator talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The chat protocol: the chat server or the bare relay.
    Chat,
    /// Redis pub/sub as a chat relay.
    Redis,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub target: Target,
    pub addrs: Vec<String>,
    pub pairs: usize,
    pub messages: usize,
    pub scenario: Scenario,
    pub size: usize,
    /// Messages delivered per second in total, paced by the senders; `None`: as fast as possible.
    pub rate: Option<f64>,
    /// Draw progress bars on stderr (when it is a terminal).
    pub progress: bool,
    /// pingpong on the chat: sessions that acknowledge deliveries (msgid 12).
    pub acks: bool,
}

#[derive(Debug)]
pub struct Report {
    pub delivered: u64,
    pub seconds: f64,
    /// One-way latency of every delivery, microseconds.
    pub latency: Histogram<u64>,
    /// fanout: per message, the latency of its last member to receive it.
    pub last_member: Option<Histogram<u64>>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }
}

/// What one thread reports: its latencies and, for fanout, the latency of each message by index.
struct Tally {
    latency: Histogram<u64>,
    by_msg: Vec<u64>,
    /// When the thread was done: the run ends with the last one.
    done: Instant,
}

impl Tally {
    fn new() -> io::Result<Tally> {
        Ok(Tally { latency: histogram()?, by_msg: Vec::new(), done: Instant::now() })
    }

    fn finish(mut self) -> io::Result<Tally> {
        self.done = Instant::now();
        Ok(self)
    }

    fn record(&mut self, start: Instant, d: Delivered) -> io::Result<()> {
        let us = (start.elapsed().as_micros() as u64).saturating_sub(d.sent_us);
        // `record` grows the histogram as needed (`saturating_record` would clamp).
        self.latency.record(us).map_err(|e| err(e.to_string()))
    }
}

fn histogram() -> io::Result<Histogram<u64>> {
    Histogram::new(3).map_err(|e| err(e.to_string()))
}

fn spawn(f: impl FnOnce() -> io::Result<Tally> + Send + 'static) -> io::Result<Worker> {
    // Thousands of these threads only read and write sockets: small stacks will do.
    thread::Builder::new().stack_size(256 * 1024).spawn(move || f()?.finish())
}

type Worker = thread::JoinHandle<io::Result<Tally>>;

fn bar(plan: &Plan, len: usize, what: &'static str) -> ProgressBar {
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64).with_message(what);
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Connects, signs up and logs in `count` users; with `groups_of`, user `i` also listens to
/// group `i / groups_of` (Redis only: chat groups are created through the server).
fn users(plan: &Plan, count: usize, groups_of: Option<usize>) -> io::Result<Vec<(Link, u32)>> {
    let tag = format!("b{}", crate::proto::time::now_ms());
    let progress = bar(plan, count, "logging in");
    let mut users = Vec::with_capacity(count);
    for i in 0..count {
        let addr = &plan.addrs[i % plan.addrs.len()];
        let user = match plan.target {
            Target::Chat => {
                let mut c = ChatLink::open(addr)?;
                let id = c.sign_up(&format!("{tag}-{i}"), "bench", plan.acks)?;
                (Link::Chat(c), id)
            }
            Target::Redis => {
                let id = i as u32;
                let groups: Vec<u32> = groups_of.map(|m| (i / m) as u32).into_iter().collect();
                let acks = plan.scenario != Scenario::PingPong;
                (Link::Redis(RedisLink::open(addr, &tag, id, &groups, acks)?), id)
            }
        };
        users.push(user);
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(users)
}

/// Paces one sender to `rate` messages per second: sleeps until message `n` is due.
#[derive(Clone, Copy)]
struct Pace {
    start: Instant,
    every: Option<Duration>,
    /// This sender's offset within one interval, so senders do not all fire at once.
    phase: f64,
}

impl Pace {
    fn new(plan: &Plan, start: Instant) -> Pace {
        // `rate` counts deliveries: a pingpong send is answered (two), a group message reaches
        // every other member.
        let per_send = match plan.scenario {
            Scenario::PingPong => 2.0,
            Scenario::Flood { .. } => 1.0,
            Scenario::Fanout { members, .. } => members.saturating_sub(1).max(1) as f64,
        };
        let senders = plan.pairs as f64;
        let every = plan.rate.filter(|r| *r > 0.0).map(|r| Duration::from_secs_f64(senders * per_send / r));
        Pace { start, every, phase: 0.0 }
    }

    /// The pace of sender `k` of `n`: the same rate, its own slot within each interval.
    fn for_sender(self, k: usize, n: usize) -> Pace {
        Pace { phase: k as f64 / n.max(1) as f64, ..self }
    }

    fn due_at(&self, n: usize) -> Option<Instant> {
        self.every.map(|every| self.start + every.mul_f64(n as f64 + self.phase))
    }

    fn due(&self, n: usize) -> bool {
        self.due_at(n).map_or(true, |at| at <= Instant::now())
    }

    fn wait(&self, n: usize) {
        if let Some(left) = self.due_at(n).and_then(|at| at.checked_duration_since(Instant::now())) {
            thread::sleep(left);
        }
    }
}

/// Keeps up to `window` messages built by `push(link, n)` in flight until `messages` are acked.
/// Messages due together go out in one write; acks already received are taken in one go.
fn send_windowed(
    link: &mut Link,
    messages: usize,
    window: usize,
    pace: Pace,
    mut push: impl FnMut(&mut Link, usize),
) -> io::Result<()> {
    let (mut sent, mut acked) = (0, 0);
    while acked < messages {
        while sent < messages && sent - acked < window && pace.due(sent) {
            push(link, sent);
            sent += 1;
        }
        link.flush()?;
        if sent == acked {
            pace.wait(sent); // nothing in flight and the next message is not due yet
            continue;
        }
        link.ack()?;
        acked += 1 + link.buffered_acks()?;
    }
    Ok(())
}

/// Counts deliveries for a progress bar without a shared write per message.
struct Counter {
    shared: Arc<AtomicU64>,
    local: u64,
}

impl Counter {
    fn tick(&mut self) {
        self.local += 1;
        if self.local == 256 {
            self.shared.fetch_add(self.local, Ordering::Relaxed);
            self.local = 0;
        }
    }
}

/// Waits for every thread, drawing progress meanwhile; returns their tallies and the seconds
/// from `t0` to the last one's end.
fn gather(
    plan: &Plan,
    threads: Vec<Worker>,
    total: u64,
    delivered: &AtomicU64,
    t0: Instant,
) -> io::Result<(Vec<Tally>, f64)> {
    let progress = bar(plan, total as usize, "delivered");
    while !threads.iter().all(|t| t.is_finished()) {
        progress.set_position(delivered.load(Ordering::Relaxed));
        thread::sleep(Duration::from_millis(100));
    }
    progress.finish_and_clear();
    let tallies = threads
        .into_iter()
        .map(|t| t.join().map_err(|_| err("a bench thread panicked"))?)
        .collect::<io::Result<Vec<Tally>>>()?;
    let end = tallies.iter().map(|t| t.done).max().unwrap_or(t0);
    Ok((tallies, end.duration_since(t0).as_secs_f64()))
}

fn merged(tallies: &[Tally]) -> io::Result<Histogram<u64>> {
    let mut latency = histogram()?;
    for t in tallies {
        latency.add(&t.latency).map_err(|e| err(e.to_string()))?;
    }
    Ok(latency)
}

/// Runs the plan.
pub fn run(plan: &Plan) -> io::Result<Report> {
    match plan.scenario {
        Scenario::PingPong => pingpong(plan),
        Scenario::Flood { window } => flood(plan, window.max(1)),
        Scenario::Fanout { members, window } => fanout(plan, members.max(2), window.max(1)),
    }
}

/// Pairs on an event loop per core (see `events.rs`).
fn pingpong(plan: &Plan) -> io::Result<Report> {
    let users = users(plan, plan.pairs * 2, None)?;
    let pad = "x".repeat(plan.size);
    let start = Instant::now();
    let pace = Pace::new(plan, start);
    let loops = thread::available_parallelism().map_or(2, |n| n.get()).min(plan.pairs.max(1));
    let mut shares: Vec<Vec<_>> = (0..loops).map(|_| Vec::new()).collect();
    let mut users = users.into_iter();
    let mut k = 0;
    while let (Some((a, ida)), Some((b, idb))) = (users.next(), users.next()) {
        shares[k % loops].push((a, ida, b, idb, pace.for_sender(k, plan.pairs)));
        k += 1;
    }
    let barrier = Arc::new(Barrier::new(loops + 1));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for share in shares {
        let (barrier, pad, messages, acks) = (barrier.clone(), pad.clone(), plan.messages, plan.acks);
        let count = Counter { shared: delivered.clone(), local: 0 };
        threads.push(spawn(move || {
            barrier.wait();
            events::pingpong(share, messages, &pad, start, count, acks)
        })?);
    }
    let total = (plan.pairs * 2 * plan.messages) as u64;
    barrier.wait();
    let t0 = Instant::now();
    let (tallies, seconds) = gather(plan, threads, total, &delivered, t0)?;
    Ok(Report { delivered: total, seconds, latency: merged(&tallies)?, last_member: None })
}

/// A sender and a receiver thread per pair; the sender keeps up to `window` messages in flight.
fn flood(plan: &Plan, window: usize) -> io::Result<Report> {
    let users = users(plan, plan.pairs * 2, None)?;
    let pad = "x".repeat(plan.size);
    let barrier = Arc::new(Barrier::new(plan.pairs * 2 + 1));
    let delivered = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let pace = Pace::new(plan, start);
    let mut threads = Vec::new();
    let mut users = users.into_iter();
    let mut k = 0;
    while let (Some((mut a, _)), Some((mut b, idb))) = (users.next(), users.next()) {
        let pace = pace.for_sender(k, plan.pairs);
        k += 1;
        let messages = plan.messages;
        let (barrier2, mut count) = (barrier.clone(), Counter { shared: delivered.clone(), local: 0 });
        threads.push(spawn(move || {
            let mut tally = Tally::new()?;
            barrier2.wait();
            for _ in 0..messages {
                tally.record(start, b.delivery()?)?;
                count.tick();
            }
            Ok(tally)
        })?);
        let (barrier, pad) = (barrier.clone(), pad.clone());
        threads.push(spawn(move || {
            barrier.wait();
            let now = || start.elapsed().as_micros() as u64;
            send_windowed(&mut a, messages, window, pace, |a, n| a.chat(idb, &body(now(), n, &pad), Some(n)))?;
            Tally::new()
        })?);
    }
    let total = (plan.pairs * plan.messages) as u64;
    barrier.wait();
    let t0 = Instant::now();
    let (tallies, seconds) = gather(plan, threads, total, &delivered, t0)?;
    Ok(Report { delivered: total, seconds, latency: merged(&tallies)?, last_member: None })
}

/// Groups of `members`: the first member sends, the others receive; on an event loop per core
/// (see `events.rs`).
fn fanout(plan: &Plan, members: usize, window: usize) -> io::Result<Report> {
    let mut all = users(plan, plan.pairs * members, Some(members))?.into_iter();
    let pad = "x".repeat(plan.size);
    let start = Instant::now();
    let pace = Pace::new(plan, start);
    let loops = thread::available_parallelism().map_or(2, |n| n.get()).max(1);
    let mut shares: Vec<(Vec<events::Sender>, Vec<events::Member>)> =
        (0..loops).map(|_| (Vec::new(), Vec::new())).collect();
    let mut next_member = 0;
    for g in 0..plan.pairs {
        let first = g * plan.messages;
        let (mut sender, _) = all.next().ok_or_else(|| err("too few users"))?;
        let group = match &mut sender {
            Link::Chat(c) => {
                let create = Request::CreateGroup { id: None, name: "bench".into(), desc: String::new() };
                c.request(&create, Some(0))?.groupid.ok_or_else(|| err("create group: no group id"))?
            }
            Link::Redis(_) => g as u32,
        };
        for _ in 1..members {
            let (mut link, _) = all.next().ok_or_else(|| err("too few users"))?;
            if let Link::Chat(c) = &mut link {
                c.request(&Request::AddGroup { id: None, groupid: group }, Some(0))?;
            }
            shares[next_member % loops].1.push(events::Member { link, first });
            next_member += 1;
        }
        let pace = pace.for_sender(g, plan.pairs);
        shares[g % loops].0.push(events::Sender { link: sender, group, pace });
    }
    let barrier = Arc::new(Barrier::new(loops + 1));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for (senders, share) in shares {
        let (barrier, pad, messages) = (barrier.clone(), pad.clone(), plan.messages);
        let count = Counter { shared: delivered.clone(), local: 0 };
        threads.push(spawn(move || {
            barrier.wait();
            events::fanout(senders, share, messages, window, &pad, start, count)
        })?);
    }
    let total = (plan.pairs * (members - 1) * plan.messages) as u64;
    barrier.wait();
    let t0 = Instant::now();
    let (tallies, seconds) = gather(plan, threads, total, &delivered, t0)?;
    // Time to the last member, per message: the latest over every loop's members.
    let mut last_member = histogram()?;
    for slot in 0..plan.pairs * plan.messages {
        let last = tallies.iter().filter_map(|t| t.by_msg.get(slot)).max().copied().unwrap_or(0);
        last_member.record(last).map_err(|e| err(e.to_string()))?;
    }
    Ok(Report { delivered: total, seconds, latency: merged(&tallies)?, last_member: Some(last_member) })
}

/// The open-file limit of this process (soft, hard), from `getrlimit`.
pub fn open_file_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
}

/// Resident memory of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| Duration::from_secs_f64((utime + stime) as f64 / hz as f64))
}

/// One idle client process's share: `count` users, each registered, logged in (with acks if
/// asked) and then left alone, connecting from `source` so one process is not bounded by one
/// address's ephemeral ports. Returns each user's id and open connection; the caller holds them.
pub fn idle_share(
    addr: &str,
    source: std::net::Ipv4Addr,
    tag: &str,
    count: usize,
    acks: bool,
) -> io::Result<Vec<(u32, TcpStream)>> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let target: std::net::SocketAddr = addr.parse().map_err(|e| err(format!("{addr}: {e}")))?;
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&SockAddr::from(std::net::SocketAddr::from((source, 0))))?;
        socket.connect(&SockAddr::from(target))?;
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        link::introduce(&mut stream)?;
        let mut c = ChatLink::from_stream(stream)?;
        let id = c.sign_up(&format!("{tag}-{i}"), "idle", acks)?;
        held.push((id, c.into_stream()));
    }
    Ok(held)
}

/// Reads and drops what arrives on `held` (never acknowledging it) until `stop`, telling
/// `progress` the lines each connection has received about once a second.
pub fn read_idle(
    held: &[TcpStream],
    stop: &std::sync::atomic::AtomicBool,
    mut progress: impl FnMut(&[usize]),
) -> io::Result<()> {
    use std::io::Read;
    let mut lines = vec![0; held.len()];
    for s in held {
        s.set_nonblocking(true)?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut told = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if told.elapsed() >= Duration::from_secs(1) {
            progress(&lines);
            told = Instant::now();
        }
        let mut any = false;
        for (s, n) in held.iter().zip(&mut lines) {
            while let Ok(got @ 1..) = (&*s).read(&mut buf) {
                *n += buf[..got].iter().filter(|&&b| b == b'\n').count();
                any = true;
            }
        }
        if !any {
            thread::sleep(Duration::from_millis(20));
        }
    }
    progress(&lines);
    Ok(())
}

/// Sends `per_user` one-to-one messages to each of `ids` over `connections` sender sessions of
/// their own, and waits for every answer; returns how many were accepted (errno 0).
pub fn fill(addr: &str, ids: &[u32], per_user: usize, connections: usize) -> io::Result<usize> {
    use std::io::Write;
    let tag = format!("fill{}", crate::proto::time::now_ms());
    let chunks: Vec<Vec<u32>> =
        ids.chunks(ids.len().div_ceil(connections.max(1)).max(1)).map(<[u32]>::to_vec).collect();
    let workers: Vec<thread::JoinHandle<io::Result<usize>>> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let addr = addr.to_owned();
            let name = format!("{tag}-{i}");
            thread::spawn(move || -> io::Result<usize> {
                let mut link = ChatLink::open(&addr)?;
                link.sign_up(&name, "fill", false)?;
                let mut writer = io::BufWriter::new(link.writer()?);
                let total = chunk.len() * per_user;
                let sender = thread::spawn(move || -> io::Result<()> {
                    for round in 0..per_user {
                        for (k, to) in chunk.iter().enumerate() {
                            let seq = round * chunk.len() + k;
                            writeln!(writer, r#"{{"msgid":6,"toid":{to},"msg":"fill {round}","seq":{seq}}}"#)?;
                        }
                    }
                    writer.flush()
                });
                let (mut answered, mut accepted) = (0, 0);
                while answered < total {
                    let line = link.next_line()?;
                    if crate::proto::peek::msgid(line) == Some(crate::proto::MsgId::Ack) {
                        answered += 1;
                        accepted += usize::from(crate::proto::peek::number(line, "errno") == Some(0));
                    }
                }
                sender.join().map_err(|_| err("the sender thread failed"))??;
                Ok(accepted)
            })
        })
        .collect();
    let mut accepted = 0;
    for w in workers {
        accepted += w.join().map_err(|_| err("a fill thread failed"))??;
    }
    Ok(accepted)
}
