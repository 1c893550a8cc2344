//! `chatbench`: load generator for chat servers. See `chatbench --help`.

use std::process::ExitCode;

use chat::bench::{run, Plan, Scenario};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    Pingpong,
    Flood,
    Fanout,
}

#[derive(Debug, Parser)]
#[command(version, about = "Drives chat traffic between pairs of users over real TCP")]
struct Args {
    #[arg(value_enum)]
    scenario: Kind,
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
    /// Print one JSON line instead of the summary.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let addrs = if args.ports.is_empty() {
        vec![args.addr.clone()]
    } else {
        let host = args.addr.rsplit_once(':').map_or(args.addr.as_str(), |(h, _)| h);
        args.ports.iter().map(|p| format!("{host}:{p}")).collect()
    };
    let scenario = match args.scenario {
        Kind::Pingpong => Scenario::PingPong,
        Kind::Flood => Scenario::Flood { window: args.window.max(1) },
        Kind::Fanout => Scenario::Fanout { members: args.members, window: args.window.max(1) },
    };
    let plan = Plan { addrs, pairs: args.pairs, messages: args.messages, scenario, size: args.size };
    let report = match run(&plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatbench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let q = |p: f64| report.latency.value_at_quantile(p);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"scenario": format!("{:?}", args.scenario).to_lowercase(), "pairs": args.pairs,
                "delivered": report.delivered, "seconds": report.seconds, "rate": report.rate(),
                "p50_us": q(0.5), "p99_us": q(0.99), "p999_us": q(0.999), "max_us": report.latency.max()})
        );
    } else {
        let who = match args.scenario {
            Kind::Fanout => format!("{} groups of {}", args.pairs, args.members),
            _ => format!("{} pairs", args.pairs),
        };
        println!(
            "{:?}: {who}, {} messages delivered in {:.2} s = {:.0} msg/s; one-way latency p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
            args.scenario,
            report.delivered,
            report.seconds,
            report.rate(),
            q(0.5),
            q(0.99),
            q(0.999),
            report.latency.max()
        );
    }
    ExitCode::SUCCESS
}
