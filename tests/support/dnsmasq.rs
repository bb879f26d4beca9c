//! A real dnsmasq on 127.0.0.1 for the DNS tests: one per test, in its own temporary
//! directory (configuration, hosts file, pid file and log all inside it), on a port free for
//! UDP and TCP, answering from local data only (`--no-resolv --no-hosts`, and `--local` for
//! the test domain, so an unknown name there is `NXDOMAIN`), every query logged.
//!
//! - A/AAAA records come from a hosts file (`--addn-hosts`): [`Dnsmasq::reload`] rewrites it
//!   and sends `SIGHUP`, and returns once dnsmasq has read it again (bounded).
//! - SRV, CNAME and TXT records are lines of the configuration file: [`Dnsmasq::restart_with`]
//!   restarts dnsmasq on the same port with another configuration (or starts it again after
//!   [`Dnsmasq::stop`]).
//! - Every record has the TTL of [`Config::ttl`] (`--local-ttl`).
//! - [`Dnsmasq::queries`] counts the queries of a type for a name in dnsmasq's log (after a
//!   marker query has shown that the log has caught up).
//!
//! [`Dnsmasq::start`] waits (bounded) until dnsmasq answers. Dropping it stops it (`SIGTERM`,
//! then `SIGKILL`), also on panic, and a panicking test gets dnsmasq's log printed.
//!
//! Without a dnsmasq binary, [`Dnsmasq::start`] prints one line and returns `None` (the test
//! passes), unless `REQUIRE_REAL_SERVERS=1`, where it panics: the binary is in the Debian
//! package `dnsmasq-base`. `DNSMASQ=/path/to/dnsmasq` picks a binary; otherwise `dnsmasq` is
//! looked up on `PATH`, then in `/usr/sbin` and `/usr/local/sbin`.
#![allow(dead_code, unreachable_pub)]

#[path = "real.rs"]
mod real;

use real::running_as_root;

use std::{
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// The domain dnsmasq answers for from its own data only.
pub const DOMAIN: &str = "example.test";
/// How long dnsmasq may take to answer after it was started, or to read its hosts again.
const START_BOUND: Duration = Duration::from_secs(10);
/// How long `SIGTERM` may take before `SIGKILL`.
const STOP_BOUND: Duration = Duration::from_secs(5);
/// How long one probe query waits for its answer.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// Lines of the log printed on failure.
const LOG_TAIL: usize = 200;

/// What dnsmasq serves.
#[derive(Clone, Debug, Default)]
pub struct Config {
    hosts: Vec<(String, String)>,
    lines: Vec<String>,
    ttl: u32,
}

impl Config {
    /// No records; TTL 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// An A or AAAA record (a line of the hosts file): `name` has address `ip`.
    pub fn host(mut self, name: &str, ip: &str) -> Self {
        self.hosts.push((ip.to_owned(), name.to_owned()));
        self
    }

    /// An SRV record: `name` is served by `target`:`port` at `priority` and `weight`.
    pub fn srv(mut self, name: &str, target: &str, port: u16, priority: u16, weight: u16) -> Self {
        self.lines.push(format!(
            "srv-host={name},{target},{port},{priority},{weight}"
        ));
        self
    }

    /// A CNAME record: `name` is an alias of `target`.
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        self.lines.push(format!("cname={name},{target}"));
        self
    }

    /// A TXT record.
    pub fn txt(mut self, name: &str, text: &str) -> Self {
        self.lines.push(format!("txt-record={name},\"{text}\""));
        self
    }

    /// The TTL of every record, in seconds (`--local-ttl`). Default 0.
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }

    fn hosts_file(&self) -> String {
        let mut text = String::new();
        for (ip, name) in &self.hosts {
            let _ = writeln!(text, "{ip} {name}");
        }
        text
    }

    fn conf_file(&self) -> String {
        let mut text = String::new();
        for line in &self.lines {
            let _ = writeln!(text, "{line}");
        }
        text
    }
}

/// The dnsmasq binary: `$DNSMASQ` when set (none if that is not a file), else `dnsmasq` on
/// `PATH`, else `/usr/sbin/dnsmasq` or `/usr/local/sbin/dnsmasq`.
pub fn binary() -> Option<PathBuf> {
    real::binary("DNSMASQ", "dnsmasq", &["/usr/sbin", "/usr/local/sbin"])
}

/// A port of 127.0.0.1 free for both UDP and TCP (bound to each, then released).
fn free_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let port = udp.local_addr().expect("a bound socket's address").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port of 127.0.0.1 free for both UDP and TCP in 100 tries");
}

/// A DNS query for `name`'s A records, with id `id`.
fn query_packet(id: u16, name: &str) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.').filter(|label| !label.is_empty()) {
        packet.push(u8::try_from(label.len()).expect("a short label"));
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]); // root; type A; class IN
    packet
}

/// A running dnsmasq owned by one test.
#[derive(Debug)]
pub struct Dnsmasq {
    binary: PathBuf,
    dir: PathBuf,
    config: Config,
    port: u16,
    child: Option<Child>,
    /// Marker queries sent so far (each has a name of its own).
    markers: AtomicUsize,
}

impl Dnsmasq {
    /// Starts dnsmasq with `config` on a free port and waits until it answers. `None` (after
    /// printing one line) when dnsmasq is not installed, unless `REQUIRE_REAL_SERVERS=1`.
    ///
    /// # Panics
    ///
    /// If dnsmasq is missing while required, or does not start (its log is printed).
    pub async fn start(config: Config) -> Option<Self> {
        let Some(binary) = binary() else {
            real::missing("dnsmasq", "dnsmasq-base", "DNSMASQ");
            return None;
        };
        let mut dnsmasq = Self {
            binary,
            dir: real::temp_dir("dnsmasq"),
            config,
            port: 0,
            child: None,
            markers: AtomicUsize::new(0),
        };
        // A port found free may be taken before dnsmasq binds it: then try another.
        for attempt in 1..=5 {
            dnsmasq.port = free_port();
            match dnsmasq.launch().await {
                Ok(()) => return Some(dnsmasq),
                Err(log) if log.contains("Address already in use") && attempt < 5 => continue,
                Err(log) => panic!("dnsmasq did not start on port {}:\n{log}", dnsmasq.port),
            }
        }
        unreachable!()
    }

    /// The address dnsmasq answers on (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Replaces the A/AAAA records with those of `config` (its other records and TTL are
    /// ignored: see [`restart_with`](Self::restart_with)): rewrites the hosts file, sends
    /// `SIGHUP`, and returns once dnsmasq has logged reading it again, so the next query gets
    /// the new records.
    ///
    /// # Panics
    ///
    /// If dnsmasq does not read the file again within 10 s.
    pub async fn reload(&mut self, config: &Config) {
        let reads_before = self.hosts_reads();
        self.config.hosts = config.hosts.clone();
        fs::write(self.hosts_path(), self.config.hosts_file()).expect("write the hosts file");
        let pid = self.child.as_ref().expect("dnsmasq is running").id();
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("run kill -HUP");
        assert!(status.success(), "kill -HUP {pid} failed");
        let deadline = Instant::now() + START_BOUND;
        while self.hosts_reads() <= reads_before {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not read its hosts file again within {START_BOUND:?} of SIGHUP\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops dnsmasq and starts it again on the same port with `config`; returns once it
    /// answers.
    ///
    /// # Panics
    ///
    /// If it does not start again.
    pub async fn restart_with(&mut self, config: Config) {
        self.stop().await;
        self.config = config;
        if let Err(log) = self.launch().await {
            panic!("dnsmasq did not start again on port {}:\n{log}", self.port);
        }
    }

    /// How many queries of type `qtype` (`"A"`, `"AAAA"`, `"SRV"`) for `name` dnsmasq has
    /// received, once its log has caught up with every query sent before this call (a marker
    /// query shows it has).
    ///
    /// # Panics
    ///
    /// If the marker query is not answered and logged within 10 s.
    pub async fn queries(&self, qtype: &str, name: &str) -> usize {
        self.sync_log().await;
        let needle = format!("query[{qtype}] {name} from");
        self.log_text()
            .lines()
            .filter(|line| line.contains(&needle))
            .count()
    }

    /// The last lines of dnsmasq's log (and of its standard error).
    pub fn log(&self) -> String {
        let mut text = String::new();
        for name in ["dnsmasq.log", "stderr.log"] {
            let content = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            let _ = writeln!(text, "--- dnsmasq {name} (last {} lines)", tail.len());
            for line in tail {
                let _ = writeln!(text, "{line}");
            }
        }
        text
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.dir.join("dnsmasq.log")).unwrap_or_default()
    }

    fn hosts_path(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// How many times dnsmasq has logged reading the hosts file.
    fn hosts_reads(&self) -> usize {
        let needle = format!("read {}", self.hosts_path().display());
        self.log_text()
            .lines()
            .filter(|line| line.contains(&needle))
            .count()
    }

    /// Sends a query for a name of its own and waits until dnsmasq has answered it and logged
    /// it: dnsmasq handles queries one at a time, so every query sent before is logged too.
    async fn sync_log(&self) {
        let n = self.markers.fetch_add(1, Ordering::Relaxed);
        let marker = format!("marker-{n}.{DOMAIN}");
        let needle = format!("query[A] {marker} from");
        let deadline = Instant::now() + START_BOUND;
        loop {
            if self.probe(&marker).await && self.log_text().contains(&needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer and log {marker} within {START_BOUND:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether dnsmasq answers a query for `name` within [`PROBE_TIMEOUT`].
    async fn probe(&self, name: &str) -> bool {
        let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
            return false;
        };
        let id = 0x5a5a;
        if socket
            .send_to(&query_packet(id, name), self.addr())
            .await
            .is_err()
        {
            return false;
        }
        let mut answer = [0u8; 512];
        let received = tokio::time::timeout(PROBE_TIMEOUT, socket.recv(&mut answer)).await;
        matches!(received, Ok(Ok(n)) if n >= 2 && answer[..2] == id.to_be_bytes())
    }

    /// Writes the configuration and hosts file and starts dnsmasq; waits until it answers.
    /// On failure returns the logs.
    async fn launch(&mut self) -> Result<(), String> {
        let dir = &self.dir;
        let conf = dir.join("dnsmasq.conf");
        fs::write(&conf, self.config.conf_file()).expect("write dnsmasq.conf");
        fs::write(self.hosts_path(), self.config.hosts_file()).expect("write the hosts file");
        let stderr = fs::File::create(dir.join("stderr.log")).expect("create stderr.log");
        let mut command = Command::new(&self.binary);
        command
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf.display()))
            .args(["--no-resolv", "--no-hosts", "--no-poll"])
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .arg(format!("--port={}", self.port))
            .arg(format!("--addn-hosts={}", self.hosts_path().display()))
            .arg(format!("--local=/{DOMAIN}/"))
            .arg(format!("--local-ttl={}", self.config.ttl))
            .arg("--log-queries")
            .arg(format!(
                "--log-facility={}",
                dir.join("dnsmasq.log").display()
            ))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
        if running_as_root() {
            // As root, dnsmasq would otherwise run as `nobody`, who cannot write the log in
            // this directory (a temp dir owned by root).
            command.arg("--user=root");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                self.child = None;
                return Err(format!("dnsmasq exited: {status}\n{}", self.log()));
            }
            if self.probe(&format!("ready.{DOMAIN}")).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "dnsmasq did not answer within {START_BOUND:?}\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops dnsmasq: `SIGTERM`, then `SIGKILL` after 5 s; returns once it has exited. Does
    /// nothing if it is stopped. [`restart_with`](Self::restart_with) starts it again.
    pub async fn stop(&mut self) {
        if !self.terminate() {
            return;
        }
        let deadline = Instant::now() + STOP_BOUND;
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill();
    }

    /// [`stop`](Self::stop), blocking, for `Drop`.
    fn stop_blocking(&mut self) {
        if !self.terminate() {
            return;
        }
        let deadline = Instant::now() + STOP_BOUND;
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// Sends `SIGTERM`; whether dnsmasq was running.
    fn terminate(&mut self) -> bool {
        let Some(child) = self.child.as_ref() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        true
    }

    /// Whether dnsmasq has exited (then forgets it).
    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            None | Some(Ok(Some(_)) | Err(_)) => {
                self.child = None;
                true
            }
            Some(Ok(None)) => false,
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The temporary directory (configuration, hosts file, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("dnsmasq on {}:", self.addr());
            eprintln!("{}", self.log());
        }
        self.stop_blocking();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
