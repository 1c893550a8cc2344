//! The load generator behind `chatbench`: registers users, logs them in over real TCP, and
//! drives chat traffic between pairs.
//!
//! Users `2k` and `2k+1` form pair `k`; user `i` connects to `ports[i % ports.len()]`, so with
//! two ports every pair spans two nodes. Message bodies carry the send time, so receivers
//! measure one-way latency on the same clock.
//! - `pingpong`: one message in flight per pair; the receiver answers, the sender sends again.
//! - `flood`: each sender keeps up to `window` messages in flight (acked with `seq`).
//! - `fanout`: `pairs` groups of `members` users; the first member of each sends to the group,
//!   up to `window` messages in flight; every other member counts and times its deliveries.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    PingPong,
    Flood { window: usize },
    Fanout { members: usize, window: usize },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub addrs: Vec<String>,
    pub pairs: usize,
    pub messages: usize,
    pub scenario: Scenario,
    pub size: usize,
}

#[derive(Debug)]
pub struct Report {
    pub delivered: u64,
    pub seconds: f64,
    /// One-way latency, microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }
}

struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    fn send(&mut self, v: &Value) -> std::io::Result<()> {
        self.writer.write_all(format!("{v}\n").as_bytes())
    }

    fn recv(&mut self) -> std::io::Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        serde_json::from_str(&line).map_err(std::io::Error::other)
    }

    fn request(&mut self, v: &Value) -> std::io::Result<Value> {
        self.send(v)?;
        self.recv()
    }
}

fn err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

/// Registers and logs in `2 × pairs` users; returns (connection, id) per user.
fn setup(plan: &Plan) -> std::io::Result<Vec<(Conn, u32)>> {
    users(plan, plan.pairs * 2)
}

fn users(plan: &Plan, count: usize) -> std::io::Result<Vec<(Conn, u32)>> {
    let run = crate::service::now_ms();
    let mut users = Vec::new();
    for i in 0..count {
        let mut c = Conn::open(&plan.addrs[i % plan.addrs.len()])?;
        let name = format!("b{run}-{i}");
        let r = c.request(&json!({"msgid":4,"name":name,"password":"bench"}))?;
        let id = r["id"].as_u64().ok_or_else(|| err(format!("register: {r}")))? as u32;
        let r = c.request(&json!({"msgid":1,"id":id,"password":"bench"}))?;
        if r["errno"] != 0 {
            return Err(err(format!("login: {r}")));
        }
        users.push((c, id));
    }
    Ok(users)
}

fn body(start: Instant, pad: &str) -> String {
    format!("{} {pad}", start.elapsed().as_micros())
}

fn latency_of(start: Instant, msg: &Value) -> Option<u64> {
    let sent: u64 = msg["msg"].as_str()?.split(' ').next()?.parse().ok()?;
    Some((start.elapsed().as_micros() as u64).saturating_sub(sent))
}

/// Keeps up to `window` requests built by `request(n)` in flight until `messages` are acked.
fn send_windowed(
    c: &mut Conn,
    messages: usize,
    window: usize,
    request: impl Fn(usize) -> Value,
) -> std::io::Result<()> {
    let (mut sent, mut acked) = (0, 0);
    while acked < messages {
        while sent < messages && sent - acked < window {
            c.send(&request(sent))?;
            sent += 1;
        }
        let r = c.recv()?;
        if r["msgid"] == 11 {
            if r["errno"] != 0 {
                return Err(err(format!("send failed: {r}")));
            }
            acked += 1;
        }
    }
    Ok(())
}

type Worker = thread::JoinHandle<std::io::Result<Histogram<u64>>>;

/// Waits for every thread and merges their latency histograms.
fn merged(threads: Vec<Worker>) -> std::io::Result<Histogram<u64>> {
    let mut latency = Histogram::<u64>::new(3).map_err(|e| err(e.to_string()))?;
    for t in threads {
        let h = t.join().map_err(|_| err("a bench thread panicked".into()))??;
        latency.add(&h).map_err(|e| err(e.to_string()))?;
    }
    Ok(latency)
}

/// Runs the plan; every thread reports its histogram, merged at the end.
pub fn run(plan: &Plan) -> std::io::Result<Report> {
    if let Scenario::Fanout { members, window } = plan.scenario {
        return fanout(plan, members.max(2), window.max(1));
    }
    let users = setup(plan)?;
    let pad = "x".repeat(plan.size);
    let barrier = Arc::new(Barrier::new(plan.pairs * 2 + 1));
    let start = Instant::now();
    let mut threads = Vec::new();
    let mut users = users.into_iter();
    while let (Some((mut a, ida)), Some((mut b, idb))) = (users.next(), users.next()) {
        let (plan, pad, barrier) = (plan.clone(), pad.clone(), barrier.clone());
        let (b_barrier, b_plan, b_pad) = (barrier.clone(), plan.clone(), pad.clone());
        // Receiver: counts, measures, and in pingpong answers.
        threads.push(thread::spawn(move || -> std::io::Result<Histogram<u64>> {
            let mut h = Histogram::<u64>::new(3).map_err(|e| err(e.to_string()))?;
            b_barrier.wait();
            let mut got = 0;
            while got < b_plan.messages {
                let m = b.recv()?;
                if m["msgid"] != 6 {
                    continue;
                }
                got += 1;
                if let Some(us) = latency_of(start, &m) {
                    // `record` grows the histogram as needed (`saturating_record` would clamp).
                    h.record(us).map_err(|e| err(e.to_string()))?;
                }
                if b_plan.scenario == Scenario::PingPong {
                    b.send(&json!({"msgid":6,"toid":ida,"msg":body(start, &b_pad)}))?;
                }
            }
            Ok(h)
        }));
        // Sender.
        threads.push(thread::spawn(move || -> std::io::Result<Histogram<u64>> {
            let h = Histogram::<u64>::new(3).map_err(|e| err(e.to_string()))?;
            barrier.wait();
            match plan.scenario {
                Scenario::PingPong => {
                    for _ in 0..plan.messages {
                        a.send(&json!({"msgid":6,"toid":idb,"msg":body(start, &pad)}))?;
                        while a.recv()?["msgid"] != 6 {}
                    }
                }
                Scenario::Flood { window } | Scenario::Fanout { window, .. } => {
                    send_windowed(
                        &mut a,
                        plan.messages,
                        window,
                        |n| json!({"msgid":6,"toid":idb,"msg":body(start, &pad),"seq":n}),
                    )?;
                }
            }
            Ok(h)
        }));
    }
    barrier.wait();
    let t0 = Instant::now();
    let latency = merged(threads)?;
    let seconds = t0.elapsed().as_secs_f64();
    let per_pair = match plan.scenario {
        Scenario::PingPong => 2 * plan.messages,
        Scenario::Flood { .. } | Scenario::Fanout { .. } => plan.messages,
    };
    Ok(Report { delivered: (plan.pairs * per_pair) as u64, seconds, latency })
}

/// Groups of `members`: the first creates the group and sends, the others receive.
fn fanout(plan: &Plan, members: usize, window: usize) -> std::io::Result<Report> {
    let mut all = users(plan, plan.pairs * members)?.into_iter();
    let pad = "x".repeat(plan.size);
    let barrier = Arc::new(Barrier::new(plan.pairs * members + 1));
    let start = Instant::now();
    let mut threads: Vec<Worker> = Vec::new();
    for _ in 0..plan.pairs {
        let (mut sender, _) = all.next().ok_or_else(|| err("too few users".into()))?;
        let r = sender.request(&json!({"msgid":8,"groupname":"bench","seq":0}))?;
        let gid = r["groupid"].as_u64().ok_or_else(|| err(format!("create group: {r}")))?;
        for _ in 1..members {
            let (mut member, _) = all.next().ok_or_else(|| err("too few users".into()))?;
            let r = member.request(&json!({"msgid":9,"groupid":gid,"seq":0}))?;
            if r["errno"] != 0 {
                return Err(err(format!("join group: {r}")));
            }
            let (barrier, messages) = (barrier.clone(), plan.messages);
            threads.push(thread::spawn(move || {
                let mut h = Histogram::<u64>::new(3).map_err(|e| err(e.to_string()))?;
                barrier.wait();
                let mut got = 0;
                while got < messages {
                    let m = member.recv()?;
                    if m["msgid"] == 10 {
                        got += 1;
                        if let Some(us) = latency_of(start, &m) {
                            h.record(us).map_err(|e| err(e.to_string()))?;
                        }
                    }
                }
                Ok(h)
            }));
        }
        let (barrier, pad, messages) = (barrier.clone(), pad.clone(), plan.messages);
        threads.push(thread::spawn(move || {
            barrier.wait();
            send_windowed(
                &mut sender,
                messages,
                window,
                |n| json!({"msgid":10,"groupid":gid,"msg":body(start, &pad),"seq":n}),
            )?;
            Histogram::<u64>::new(3).map_err(|e| err(e.to_string()))
        }));
    }
    barrier.wait();
    let t0 = Instant::now();
    let latency = merged(threads)?;
    let delivered = (plan.pairs * (members - 1) * plan.messages) as u64;
    Ok(Report { delivered, seconds: t0.elapsed().as_secs_f64(), latency })
}

/// The open-file limit of this process, from `/proc/self/limits` (soft, hard).
pub fn open_file_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut nums = line.split_whitespace().filter_map(|w| w.parse::<u64>().ok());
    Some((nums.next()?, nums.next()?))
}

/// Resident memory of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// One idle client process's share: `count` users, each registered, logged in and then left
/// alone, connecting from `source` so one process is not bounded by one address's ephemeral
/// ports. Returns the open connections; the caller holds them.
pub fn idle_share(addr: &str, source: std::net::Ipv4Addr, tag: &str, count: usize) -> std::io::Result<Vec<TcpStream>> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let target: std::net::SocketAddr = addr.parse().map_err(|e| err(format!("{addr}: {e}")))?;
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.bind(&SockAddr::from(std::net::SocketAddr::from((source, 0))))?;
        socket.connect(&SockAddr::from(target))?;
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut c = Conn { reader: BufReader::new(stream.try_clone()?), writer: stream };
        let r = c.request(&json!({"msgid":4,"name":format!("{tag}-{i}"),"password":"idle"}))?;
        let id = r["id"].as_u64().ok_or_else(|| err(format!("register: {r}")))?;
        let r = c.request(&json!({"msgid":1,"id":id,"password":"idle"}))?;
        if r["errno"] != 0 {
            return Err(err(format!("login: {r}")));
        }
        held.push(c.writer);
    }
    Ok(held)
}
