//! `chatbench`: load generator for chat servers. See `chatbench --help`.

use std::process::ExitCode;

use chat::bench::{run, Plan, Scenario, Target};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Pingpong,
    Flood,
    Fanout,
    /// Hold `--connections` logged-in idle sessions; report logins/s and server RSS each.
    Idle,
    /// Serve the bare relay baseline on `--listen` (the transport without the chat).
    Relay,
    /// One user with `--friends` friends (half of them online, on the nodes in turn) logs in
    /// and out `--messages` times, on the nodes in turn; reports logins per second.
    Logins,
    /// Check that every acknowledged message arrives once and in order while faults happen
    /// (`--users`, `--secs`, `--rate`, `--rst-every`, `--blackhole-every`); exits non-zero if any is lost.
    Integrity,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum System {
    /// The chat protocol: a chat server, or `chatbench relay`.
    Chat,
    /// Redis pub/sub as a chat relay (`--addr` is the Redis server).
    Redis,
}

#[derive(Debug, Parser)]
#[command(version, about = "Drives chat traffic between pairs of users over real TCP")]
struct Args {
    #[arg(value_enum)]
    scenario: Kind,
    /// What `--addr` is.
    #[arg(long, value_enum, default_value = "chat")]
    target: System,
    /// Server address (host:port); with --ports, the host.
    #[arg(long, default_value = "127.0.0.1:6000")]
    addr: String,
    /// Ports of several nodes; user i connects to ports[i % n], so pairs span nodes.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    /// Pairs of users (fanout: groups).
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// fanout: members per group, the sender included.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Messages per pair (pingpong: round trips).
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// flood: messages in flight per sender.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Bytes of padding per message.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Messages delivered per second in total, paced by the senders (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// relay: address to listen on.
    #[arg(long, default_value = "127.0.0.1:6100")]
    listen: String,
    /// relay: reactor threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// pingpong on the chat: log in with acks and acknowledge every delivery (msgid 12);
    /// idle: sessions with acks, which never acknowledge.
    #[arg(long)]
    acks: bool,
    /// idle: once every session is held, send this many messages to each (the sessions read
    /// them and never acknowledge); reports what they hold and the server's growth.
    #[arg(long, default_value_t = 0)]
    fill: usize,
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    json: bool,
    /// idle: sessions to hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// idle: client processes to spread them over (each has its own open-file limit).
    #[arg(long, default_value_t = 4)]
    procs: usize,
    /// The server's pid: its CPU time per message, and (idle) its memory per session. Several
    /// (comma-separated): the nodes of a cluster, summed.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// logins: friends of the user who logs in and out.
    #[arg(long, default_value_t = 100)]
    friends: usize,
    /// integrity: users sending to random partners.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// integrity: seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// integrity: most seconds the final drain may take.
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// integrity: canonical sessions (no acks): what the kernel swallowed at a reset counts as lost.
    #[arg(long)]
    no_acks: bool,
    /// integrity: one user resets its connection (RST) every this many milliseconds.
    #[arg(long)]
    rst_every: Option<u64>,
    /// integrity: one user's path goes silent both ways (sockets kept open) every this many
    /// milliseconds; the server needs `--ack-timeout` below `--blackhole-for` plus the drain.
    #[arg(long)]
    blackhole_every: Option<u64>,
    /// integrity: milliseconds a silent path lasts before its user gives up on it.
    #[arg(long, default_value_t = 3000)]
    blackhole_for: u64,
    /// integrity: a fault to inject, a shell command (e.g. kill -9 a node and start it again);
    /// repeat for several: one runs every `--fault-every`, in turn, while messages are sent.
    #[arg(long)]
    fault: Vec<String>,
    /// integrity: milliseconds between faults.
    #[arg(long, default_value_t = 10_000)]
    fault_every: u64,
    /// Begin every chat connection with a PROXY header (as nginx with `proxy_protocol on`
    /// would), to reach nodes started with `--proxy-protocol` directly (not for integrity).
    #[arg(long)]
    proxy_header: bool,
    /// idle, internal: run as one client process with this share, `INDEX:COUNT:TAG`.
    #[arg(long, hide = true)]
    share: Option<String>,
}

/// The same allocator as `chatserver`, so the relay baseline differs from it only in the chat.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    chat::bench::send_proxy_header(args.proxy_header);
    if matches!(args.scenario, Kind::Relay) {
        let listener = match std::net::TcpListener::bind(&args.listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("chatbench: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        if let Ok(addr) = listener.local_addr() {
            println!("listening on {addr}");
        }
        let e = chat::bench::relay::serve(listener, args.threads);
        eprintln!("chatbench: relay stopped: {e:?}");
        return ExitCode::FAILURE;
    }
    if matches!(args.scenario, Kind::Idle) {
        return match idle(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("chatbench: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let addrs = addrs(&args);
    if matches!(args.scenario, Kind::Integrity) {
        return integrity(&args, addrs);
    }
    if matches!(args.scenario, Kind::Logins) {
        return logins(&args, addrs);
    }
    let scenario = match args.scenario {
        Kind::Pingpong => Scenario::PingPong,
        Kind::Flood => Scenario::Flood { window: args.window.max(1) },
        Kind::Fanout => Scenario::Fanout { members: args.members, window: args.window.max(1) },
        Kind::Idle | Kind::Relay | Kind::Integrity | Kind::Logins => unreachable!("handled above"),
    };
    let target = match args.target {
        System::Chat => Target::Chat,
        System::Redis => Target::Redis,
    };
    let plan = Plan {
        target,
        addrs,
        pairs: args.pairs,
        messages: args.messages,
        scenario,
        size: args.size,
        rate: args.rate,
        progress: !args.json,
        acks: args.acks,
    };
    if args.acks && !(matches!(args.scenario, Kind::Pingpong) && matches!(args.target, System::Chat)) {
        eprintln!("chatbench: --acks is for pingpong against the chat");
        return ExitCode::FAILURE;
    }
    let (report, cpu) = match with_cpu(&args.pid, || run(&plan)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpu_us_per_msg = cpu.map(|c| c.as_secs_f64() * 1e6 / report.delivered.max(1) as f64);
    let q = |p: f64| report.latency.value_at_quantile(p);
    let last = report.last_member.as_ref().map(|h| (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()));
    if args.json {
        println!(
            "{}",
            serde_json::json!({"scenario": format!("{:?}", args.scenario).to_lowercase(), "acks": args.acks,
                "target": format!("{:?}", args.target).to_lowercase(), "pairs": args.pairs,
                "members": matches!(args.scenario, Kind::Fanout).then_some(args.members),
                "delivered": report.delivered, "seconds": report.seconds, "rate": report.rate(),
                "p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": report.latency.max(),
                "last_member_p50_us": last.map(|l| l.0), "last_member_p99_us": last.map(|l| l.1),
                "last_member_max_us": last.map(|l| l.2), "server_cpu_us_per_msg": cpu_us_per_msg})
        );
    } else {
        let who = match args.scenario {
            Kind::Fanout => format!("{} groups of {}", args.pairs, args.members),
            _ => format!("{} pairs", args.pairs),
        };
        println!(
            "{:?} ({:?}): {who}, {} messages delivered in {:.2} s = {:.0} msg/s; one-way latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            args.scenario,
            args.target,
            report.delivered,
            report.seconds,
            report.rate(),
            q(0.5),
            q(0.99),
            q(0.999),
            report.latency.max()
        );
        if let Some((p50, p99, max)) = last {
            println!("time to the last member: p50 {p50} µs, p99 {p99} µs, max {max} µs");
        }
        if let Some(us) = cpu_us_per_msg {
            println!("server CPU: {us:.2} µs per message delivered");
        }
    }
    ExitCode::SUCCESS
}

fn logins(args: &Args, addrs: Vec<String>) -> ExitCode {
    use chat::bench::logins::{logins, LoginPlan};
    let plan = LoginPlan { addrs, friends: args.friends, logins: args.messages };
    let (r, cpu) = match with_cpu(&args.pid, || logins(&plan)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cpu_us_per_login = cpu.map(|c| c.as_secs_f64() * 1e6 / r.logins.max(1) as f64);
    if args.json {
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v["scenario"] = "logins".into();
        v["server_cpu_us_per_login"] = cpu_us_per_login.into();
        println!("{v}");
    } else {
        println!(
            "Logins: {} login + logout cycles with {} friends in {:.2} s = {:.0}/s; a cycle p50 {} µs, p99 {} µs",
            r.logins, r.friends, r.seconds, r.logins_per_s, r.cycle_p50_us, r.cycle_p99_us
        );
        if let Some(us) = cpu_us_per_login {
            println!("server CPU: {us:.0} µs per login");
        }
    }
    ExitCode::SUCCESS
}

fn integrity(args: &Args, addrs: Vec<String>) -> ExitCode {
    use chat::bench::integrity::{integrity, IntegrityPlan};
    let secs = |s: f64| std::time::Duration::from_secs_f64(s.max(0.0));
    let plan = IntegrityPlan {
        addrs,
        users: args.users,
        duration: secs(args.secs),
        rate: args.rate.unwrap_or(200.0),
        drain: secs(args.drain),
        acks: !args.no_acks,
        rst_every: args.rst_every.map(std::time::Duration::from_millis),
        blackhole_every: args.blackhole_every.map(std::time::Duration::from_millis),
        blackhole_for: std::time::Duration::from_millis(args.blackhole_for),
        faults: args.fault.clone(),
        fault_every: std::time::Duration::from_millis(args.fault_every.max(1)),
        progress: !args.json,
    };
    let r = match integrity(&plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    } else {
        println!(
            "Integrity: {} attempted, {} acknowledged, {} delivered; lost {} ({} of them acknowledged by a silenced proxy), unexpected {}, duplicated {}, recovered {}, order violations {}; {} refused, {} reconnects, {} resets, {} blackholes, {} faults ({} failed)",
            r.attempted, r.acknowledged, r.delivered, r.lost, r.lost_in_proxy, r.unexpected, r.duplicated,
            r.recovered, r.order_violations, r.refused, r.reconnects, r.resets, r.blackholes, r.faults,
            r.faults_failed
        );
        if !r.lost_examples.is_empty() {
            println!("lost (sender:n): {}", r.lost_examples.join(" "));
        }
    }
    if r.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `f`, with the CPU time the processes `pids` spent meanwhile (summed; `None` if none
/// were given or one could not be read).
fn with_cpu<T, E>(pids: &[u32], f: impl FnOnce() -> Result<T, E>) -> Result<(T, Option<std::time::Duration>), E> {
    let before = total(pids, chat::bench::cpu_time);
    let out = f()?;
    let cpu = before.zip(total(pids, chat::bench::cpu_time)).map(|(b, a)| a.saturating_sub(b));
    Ok((out, cpu))
}

/// A reading summed over the given processes; `None` if there are none or one cannot be read.
fn total<T: std::iter::Sum<T>>(pids: &[u32], read: impl Fn(u32) -> Option<T>) -> Option<T> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| read(p)).sum()
}

/// `--addr`, or with `--ports` one address per port on its host.
fn addrs(args: &Args) -> Vec<String> {
    if args.ports.is_empty() {
        return vec![args.addr.clone()];
    }
    let host = args.addr.rsplit_once(':').map_or(args.addr.as_str(), |(h, _)| h);
    args.ports.iter().map(|p| format!("{host}:{p}")).collect()
}

/// `idle`: the parent spreads the sessions over child processes (each from its own 127.0.0.x
/// source address), waits until all are logged in, measures, then lets them go.
fn idle(args: &Args) -> anyhow::Result<()> {
    use anyhow::{anyhow, Context as _};
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    if let Some(share) = &args.share {
        // Child: log in our share, say so, hold the sessions until stdin closes.
        let mut parts = share.splitn(3, ':');
        let (Some(index), Some(count), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
            anyhow::bail!("bad share {share:?}");
        };
        let index: u8 = index.parse().context("share index")?;
        let count: usize = count.parse().context("share count")?;
        let source = std::net::Ipv4Addr::new(127, 0, 1, index.saturating_add(1));
        let held = chat::bench::idle_share(&args.addr, source, &format!("{tag}-{index}"), count, args.acks)
            .context("idle sessions")?;
        let ids: Vec<String> = held.iter().map(|(id, _)| id.to_string()).collect();
        println!("ready {} {}", held.len(), ids.join(","));
        let _ = std::io::stdout().flush();
        // Read (and drop) what arrives until stdin closes, saying every second how much came.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopper = stop.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stopper.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let streams: Vec<std::net::TcpStream> = held.into_iter().map(|(_, s)| s).collect();
        chat::bench::read_idle(&streams, &stop, |lines| {
            println!("received {} {}", lines.iter().sum::<usize>(), lines.iter().max().unwrap_or(&0));
            let _ = std::io::stdout().flush();
        })?;
        return Ok(());
    }
    let procs = args.procs.clamp(1, 200);
    // With --ports, child i serves node i % nodes: give at least one process per node.
    let nodes = addrs(args);
    let tag = format!("idle{}", chat::proto::time::now_ms());
    let before = total(&args.pid, chat::bench::rss_kib);
    let start = std::time::Instant::now();
    let mut children = Vec::new();
    for i in 0..procs {
        let count = args.connections / procs + usize::from(i < args.connections % procs);
        let exe = std::env::current_exe()?;
        let mut command = Command::new(exe);
        command.args(["idle", "--addr", &nodes[i % nodes.len()], "--share", &format!("{i}:{count}:{tag}")]);
        if args.acks {
            command.arg("--acks");
        }
        if args.proxy_header {
            command.arg("--proxy-header");
        }
        let child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().context("a client process")?;
        children.push(child);
    }
    let mut outputs = Vec::new();
    let (mut held, mut ids) = (0, Vec::new());
    for child in &mut children {
        let out = BufReader::new(child.stdout.take().ok_or_else(|| anyhow!("a client process has no output"))?);
        let mut lines = out.lines();
        let line = lines.next().transpose()?.unwrap_or_default();
        let mut words = line.strip_prefix("ready ").ok_or_else(|| anyhow!("a client process failed"))?.split(' ');
        held += words.next().and_then(|n| n.parse::<usize>().ok()).ok_or_else(|| anyhow!("a bad ready line"))?;
        ids.extend(words.next().unwrap_or("").split(',').filter_map(|id| id.parse::<u32>().ok()));
        // The child's progress, `received TOTAL MOST`, kept as it comes.
        let seen = std::sync::Arc::new(parking_lot::Mutex::new((0usize, 0usize)));
        let keep = seen.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut words = line.strip_prefix("received ").unwrap_or("").split(' ');
                let mut number = || words.next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0);
                *keep.lock() = (number(), number());
            }
        });
        outputs.push(seen);
    }
    let received = || outputs.iter().map(|s| *s.lock()).fold((0, 0), |(t, m), (n, most)| (t + n, m.max(most)));
    let seconds = start.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = total(&args.pid, chat::bench::rss_kib);
    let per_conn = before.zip(after).map(|(b, a)| a.saturating_sub(b) as f64 * 1024.0 / held.max(1) as f64);
    let limit = chat::bench::open_file_limit();
    // Filled: every session gets `fill` messages; with acks it holds at most its window.
    let filled = if args.fill > 0 {
        let accepted = chat::bench::fill(&nodes[0], &ids, args.fill, 16).context("filling the sessions")?;
        // Deliveries go on after the last answer: wait until nothing more arrives for 3 s.
        let (mut last, mut quiet) = (received(), std::time::Instant::now());
        while quiet.elapsed() < std::time::Duration::from_secs(3) {
            std::thread::sleep(std::time::Duration::from_millis(500));
            if received() != last {
                (last, quiet) = (received(), std::time::Instant::now());
            }
        }
        Some((accepted, total(&args.pid, chat::bench::rss_kib)))
    } else {
        None
    };
    for child in &mut children {
        drop(child.stdin.take());
    }
    for mut child in children {
        let _ = child.wait();
    }
    let (received, most) = received();
    let fill_growth = filled.and_then(|(_, rss)| after.zip(rss)).map(|(a, f)| f.saturating_sub(a));
    if args.json {
        println!(
            "{}",
            serde_json::json!({"scenario":"idle","sessions":held,"procs":procs,"seconds":seconds,
                "logins_per_s": held as f64 / seconds, "server_rss_kib": after,
                "server_bytes_per_session": per_conn, "client_open_file_limit": limit.map(|l| l.0),
                "acks": args.acks, "fill": args.fill, "fill_accepted": filled.map(|f| f.0),
                "received": received, "received_most": most, "fill_growth_kib": fill_growth})
        );
    } else {
        println!(
            "Idle: {held} sessions from {procs} processes, registered and logged in in {seconds:.1} s ({:.0} logins/s); server RSS {} KiB, {} bytes per session; open-file limit here {:?}",
            held as f64 / seconds,
            after.map_or("?".into(), |a| a.to_string()),
            per_conn.map_or("?".into(), |b| format!("{b:.0}")),
            limit
        );
        if let Some((accepted, _)) = filled {
            println!(
                "Filled: {accepted} of {} messages accepted; the sessions received {received} (at most {most} each); server RSS grew {} KiB more",
                args.fill * ids.len(),
                fill_growth.map_or("?".into(), |g| g.to_string())
            );
        }
    }
    Ok(())
}
