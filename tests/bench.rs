//! The load generator against a real server and a real Redis, at toy sizes: every scenario
//! delivers exactly what it should and ends. (Speed is measured by `scripts/bench.sh`, not here.)

mod support;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::redis::RedisServer;
use support::ServerProcess;

/// Runs `chatbench ARGS --json` and returns its report; a run that does not end is a failure.
fn chatbench(args: &[&str]) -> Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatbench"))
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("chatbench {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(status.success(), "chatbench {args:?}: {stderr}{stdout}");
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("chatbench {args:?} printed {stdout:?}: {e}"))
}

fn check(report: &Value, delivered: u64) {
    assert_eq!(report["delivered"], delivered, "{report}");
    assert!(report["rate"].as_f64().is_some_and(|r| r > 0.0), "{report}");
    assert!(report["p50_us"].as_u64().is_some_and(|p| p > 0), "{report}");
}

#[test]
fn every_scenario_delivers_what_it_should_to_the_chat_server_and_to_redis() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::spawn(&support::fresh_store(dir.path()), &[]);
    let redis = RedisServer::start();
    let chat = server.addr.to_string();
    let redis_addr = format!("127.0.0.1:{}", redis.port);
    for (target, addr) in [("chat", chat.as_str()), ("redis", redis_addr.as_str())] {
        let at = ["--target", target, "--addr", addr];
        let run = |args: &[&str]| chatbench(&[args, &at[..]].concat());
        // Pingpong: both directions count.
        check(&run(&["pingpong", "--pairs", "3", "--messages", "20"]), 3 * 2 * 20);
        check(&run(&["pingpong", "--pairs", "3", "--messages", "20", "--rate", "2000"]), 3 * 2 * 20);
        check(&run(&["flood", "--pairs", "2", "--messages", "50", "--window", "8"]), 2 * 50);
        // Fanout: every member but the sender, every message; and the time to the last member.
        let fanout = run(&["fanout", "--pairs", "2", "--members", "5", "--messages", "10", "--window", "4"]);
        check(&fanout, 2 * 4 * 10);
        assert!(fanout["last_member_p99_us"].as_u64().is_some_and(|p| p > 0), "{fanout}");
    }
}
