//! A private Redis on a free port in a temp dir, without persistence; killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::mariadb::free_port;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut r = RedisServer { port: 0, child: None, dir: tempfile::tempdir().unwrap() };
        // A free port can be taken by another test between the probe and the bind: then our
        // server exits and the one answering is someone else's, so check and try another.
        for _ in 0..5 {
            r.port = free_port();
            if r.launch() {
                return r;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts on `self.port`; `false` if another server holds the port.
    fn launch(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: run ./scripts/test.sh, which installs it");
        self.child = Some(child);
        let t = Instant::now();
        let ours = self.dir.path().display().to_string();
        loop {
            if self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some()) {
                self.child = None;
                return false; // exited: the port was taken
            }
            if self.cli(&["CONFIG", "GET", "dir"]).contains(&ours) {
                return true;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "redis-server did not start on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port after `stop`, with the data of the last `SAVE`.
    pub fn start_again(&mut self) {
        assert!(self.launch(), "port {} was taken while Redis was down", self.port);
    }

    /// Shuts down (SHUTDOWN NOSAVE, as an operator's restart does) and starts again on the same
    /// port, empty: every key is gone. Unlike `kill -9`, a shutdown never separates a script's
    /// reply from the messages it published (see the README's known limits).
    pub fn restart(&mut self) {
        self.cli(&["SHUTDOWN", "NOSAVE"]);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        assert!(self.launch(), "port {} was taken while Redis was down", self.port);
    }

    /// A Redis command's reply, as text (via redis-cli).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
