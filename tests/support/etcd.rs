//! A real etcd on 127.0.0.1 for tests: one per test, a single member with its data directory
//! in a temporary directory, on a free client port and a free peer port.
//!
//! [`Etcd::start`] waits (bounded) until etcd answers `GET /health` with `"health":"true"`;
//! [`Etcd::stop`] stops it (`SIGTERM`, then `SIGKILL`), [`Etcd::start_again`] starts it again
//! on the same ports with the same data directory. Dropping it stops it, also on panic, and a
//! panicking test gets etcd's log printed.
//!
//! Without an etcd binary, [`Etcd::start`] prints one line and returns `None` (the test
//! passes), unless `REQUIRE_REAL_SERVERS=1`, where it panics: CI installs the Debian package
//! `etcd-server`. `ETCD=/path/to/etcd` picks a binary; otherwise `etcd` is looked up on `PATH`,
//! then in `/usr/bin` and `/usr/local/bin`.
#![allow(dead_code, unreachable_pub)]

#[path = "real.rs"]
mod real;

use std::{
    fmt::Write as _,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long etcd may take to answer its health check after it was started (a single member
/// elects itself in about a second).
const START_BOUND: Duration = Duration::from_secs(20);
/// How long `SIGTERM` may take before `SIGKILL`.
const TERM_BOUND: Duration = Duration::from_secs(5);
/// Lines of the log printed on failure.
const LOG_TAIL: usize = 200;

/// The etcd binary: `$ETCD` when set (none if that is not a file), else `etcd` on `PATH`, else
/// `/usr/bin/etcd` or `/usr/local/bin/etcd`.
pub fn binary() -> Option<PathBuf> {
    real::binary("ETCD", "etcd", &["/usr/bin", "/usr/local/bin"])
}

pub use real::free_port;

/// A running etcd owned by one test.
#[derive(Debug)]
pub struct Etcd {
    binary: PathBuf,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    process: Option<Child>,
}

impl Etcd {
    /// Starts etcd on free ports and waits until it is healthy. `None` (after printing one
    /// line) when etcd is not installed, unless `REQUIRE_REAL_SERVERS=1`.
    ///
    /// # Panics
    ///
    /// If etcd is missing while required, or does not start (its log is printed).
    pub async fn start() -> Option<Self> {
        let Some(binary) = binary() else {
            real::missing("etcd", "etcd-server", "ETCD");
            return None;
        };
        let mut etcd = Self {
            binary,
            dir: real::temp_dir("etcd"),
            client_port: 0,
            peer_port: 0,
            process: None,
        };
        // A port found free may be taken before etcd binds it: then try others.
        for attempt in 1..=5 {
            etcd.client_port = free_port();
            etcd.peer_port = free_port();
            match etcd.launch().await {
                Ok(()) => return Some(etcd),
                Err(log) if log.contains("address already in use") && attempt < 5 => {
                    let _ = fs::remove_dir_all(etcd.data_dir());
                }
                Err(log) => panic!("etcd did not start on port {}:\n{log}", etcd.client_port),
            }
        }
        unreachable!()
    }

    /// The client address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The endpoint for etcd clients: `127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.addr().to_string()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The temporary directory holding the data directory and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops etcd (`SIGTERM`, then `SIGKILL` after 5 s); returns once it has exited. Does
    /// nothing if stopped.
    pub async fn stop(&mut self) {
        let Some(process) = self.process.as_mut() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + TERM_BOUND;
        while Instant::now() < deadline {
            if !matches!(process.try_wait(), Ok(None)) {
                self.process = None;
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("etcd: no exit within {TERM_BOUND:?} of SIGTERM; sending SIGKILL");
        self.kill();
    }

    /// Starts etcd again, after [`stop`](Self::stop), on the same ports with the same data
    /// directory; returns once it is healthy.
    ///
    /// # Panics
    ///
    /// If it is still running or does not start.
    pub async fn start_again(&mut self) {
        assert!(self.process.is_none(), "start_again: etcd is still running");
        if let Err(log) = self.launch().await {
            panic!(
                "etcd did not start again on port {}:\n{log}",
                self.client_port
            );
        }
    }

    /// The value of the metric `name` (its line `name value` in `GET /metrics`, a metric
    /// without labels), if etcd answers and has it. Blocking, bounded by short timeouts.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let bound = Duration::from_secs(2);
        let mut stream = TcpStream::connect_timeout(&self.addr(), bound).ok()?;
        let _ = stream.set_read_timeout(Some(bound));
        let _ = stream.set_write_timeout(Some(bound));
        // HTTP/1.0: the body comes whole, not in chunks, and ends with the connection.
        let request = format!("GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr());
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = Vec::new();
        let _ = stream.take(16 * 1024 * 1024).read_to_end(&mut response);
        String::from_utf8_lossy(&response).lines().find_map(|line| {
            let (metric, value) = line.split_once(' ')?;
            if metric == name {
                value.trim().parse().ok()
            } else {
                None
            }
        })
    }

    /// The last lines of etcd's log (its standard error).
    pub fn log(&self) -> String {
        let content = fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = content.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
        let mut text = format!("--- etcd log (last {} lines)\n", tail.len());
        for line in tail {
            let _ = writeln!(text, "{line}");
        }
        text
    }

    /// Starts the process; waits until it is healthy. On failure returns the log.
    async fn launch(&mut self) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("create etcd.log");
        let process = Command::new(&self.binary)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .env_remove("ETCDCTL_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.binary.display()))?;
        self.process = Some(process);
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Some(status) = self.process.as_mut().and_then(|p| p.try_wait().ok()?) {
                self.process = None;
                return Err(format!("etcd exited: {status}\n{}", self.log()));
            }
            if self.healthy() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "etcd was not healthy within {START_BOUND:?}\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether `GET /health` answers `"health":"true"` (blocking, bounded by short
    /// timeouts).
    fn healthy(&self) -> bool {
        let bound = Duration::from_millis(500);
        let Ok(mut stream) = TcpStream::connect_timeout(&self.addr(), bound) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(bound));
        let _ = stream.set_write_timeout(Some(bound));
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr()
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = Vec::new();
        let _ = stream.take(64 * 1024).read_to_end(&mut response);
        String::from_utf8_lossy(&response).contains("\"health\":\"true\"")
    }

    /// Kills the process (`SIGKILL`).
    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// The blocking stop of `Drop`: `SIGTERM`, then `SIGKILL`.
    fn stop_blocking(&mut self) {
        let Some(process) = self.process.as_mut() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &process.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + TERM_BOUND;
        while Instant::now() < deadline {
            if !matches!(process.try_wait(), Ok(None)) {
                self.process = None;
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("etcd on {}:", self.addr());
            eprintln!("{}", self.log());
        }
        self.stop_blocking();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
