//! A private nginx running the project's `nginx.conf`, with the listen port and the node lines
//! rewritten for this test; stopped on drop.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::mariadb::free_port;

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(nodes: &[SocketAddr]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let template = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/nginx.conf")).unwrap();
        let mut conf = String::new();
        for line in template.lines() {
            if line.trim_end().ends_with("# node") {
                if !conf.contains("#node-lines") {
                    for n in nodes {
                        conf.push_str(&format!("        server {n} max_fails=1 fail_timeout=5s; #node-lines\n"));
                    }
                }
            } else if line.trim_end().ends_with("# listen") {
                conf.push_str(&format!("        listen 127.0.0.1:{port};\n"));
            } else {
                conf.push_str(line);
                conf.push('\n');
            }
        }
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .args(["-c", "nginx.conf", "-e", "error.log", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is not installed: run ./scripts/test.sh, which installs it");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let t = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
                panic!("nginx did not start on {addr}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { addr, child, _dir: dir }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-QUIT", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}
