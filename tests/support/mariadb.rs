//! A private MariaDB for the tests: its own data directory, a free port, no authentication
//! (`--skip-grant-tables`: nothing but this machine's loopback can reach it). One per test
//! process; a watchdog stops it and removes its files when the test process ends.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;

pub struct MariaDb {
    pub port: u16,
    pub dir: PathBuf,
    /// Starts the server under a watchdog that stops it (and, once this test process is gone,
    /// deletes its files) when this process ends.
    script: String,
    /// The watchdogs outlive this process's use of the database on purpose: they clean up.
    watchdogs: std::sync::Mutex<Vec<std::process::Child>>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn which(names: &[&str]) -> String {
    for name in names {
        for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
            let path = format!("{dir}/{name}");
            if std::path::Path::new(&path).exists() {
                return path;
            }
        }
    }
    panic!("none of {names:?} is installed: run ./scripts/test.sh, which installs mariadb-server");
}

impl MariaDb {
    /// The instance of this test process, started on first use.
    pub fn shared() -> &'static MariaDb {
        static DB: OnceLock<MariaDb> = OnceLock::new();
        DB.get_or_init(MariaDb::start)
    }

    /// A private instance, for tests that stop and restart it.
    pub fn start() -> MariaDb {
        let dir = tempfile::Builder::new().prefix("chat-mariadb-").tempdir().unwrap().keep();
        let data = dir.join("data");
        // Seen failing once, unexplained, on a loaded machine: try again once, and say why.
        let install = || {
            let _ = std::fs::remove_dir_all(&data);
            Command::new(which(&["mariadb-install-db", "mysql_install_db"]))
                .args(["--no-defaults", "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"])
                .arg(format!("--datadir={}", data.display()))
                .output()
                .unwrap()
        };
        let first = install();
        if !first.status.success() {
            eprintln!("mariadb-install-db failed, trying again: {}", String::from_utf8_lossy(&first.stderr));
            let again = install();
            assert!(
                again.status.success(),
                "mariadb-install-db failed:\n{}\n{}",
                String::from_utf8_lossy(&again.stdout),
                String::from_utf8_lossy(&again.stderr)
            );
        }
        let port = free_port();
        let server = which(&["mariadbd", "mysqld"]);
        let args = format!(
            "--no-defaults --user=root --datadir={data} --socket={dir}/sock --port={port} --bind-address=127.0.0.1 \
             --skip-grant-tables --skip-log-bin --skip-name-resolve --innodb-buffer-pool-size=64M \
             --innodb-flush-log-at-trx-commit=2 --max-connections=1000 --pid-file={dir}/pid --log-error={dir}/error.log",
            data = data.display(),
            dir = dir.display()
        );
        let script = format!(
            "{server} {args} & db=$!; while kill -0 {me} 2>/dev/null && kill -0 $db 2>/dev/null; do sleep 0.3; done; \
             kill $db 2>/dev/null; wait $db; kill -0 {me} 2>/dev/null || rm -rf {dir}",
            me = std::process::id(),
            dir = dir.display()
        );
        let db = MariaDb { port, dir, script, watchdogs: std::sync::Mutex::new(Vec::new()) };
        db.launch();
        db
    }

    fn launch(&self) {
        let watchdog =
            Command::new("sh").args(["-c", &self.script]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        self.watchdogs.lock().unwrap().push(watchdog);
        let (db, port) = (self, self.port);
        let t = Instant::now();
        while db.root().is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                let log = std::fs::read_to_string(db.dir.join("error.log")).unwrap_or_default();
                panic!("MariaDB did not start on port {port}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (as an outage would); its data stays for `restart`.
    pub fn stop(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).unwrap();
        Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&self) {
        self.launch();
    }

    fn root(&self) -> mysql::Result<mysql::Conn> {
        mysql::Conn::new(mysql::Opts::from_url(&format!("mysql://root@127.0.0.1:{}/", self.port)).unwrap())
    }

    /// A new, empty database; returns its URL.
    pub fn fresh_database(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!("chat_{}", N.fetch_add(1, Ordering::Relaxed));
        self.root().unwrap().query_drop(format!("CREATE DATABASE {name} CHARACTER SET utf8mb4")).unwrap();
        format!("mysql://root@127.0.0.1:{}/{name}", self.port)
    }
}
