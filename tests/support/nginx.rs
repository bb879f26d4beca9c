//! A real nginx on 127.0.0.1 for tests: one per test, in its own temporary directory (prefix,
//! configuration, pid file, logs and temp paths all inside it), on a free port, serving
//! `location / { return 200 "ok"; }` over HTTP/2 without TLS (h2c) or HTTP/1.1, with the
//! server-level directives the test gives ([`Config::directive`]).
//!
//! [`Nginx::start`] waits (bounded) until nginx accepts connections; [`Nginx::reload`] sends
//! it `SIGHUP` (`nginx -s reload`), [`Nginx::stop`] stops it (`SIGQUIT`, then `SIGTERM`, then
//! `SIGKILL`), [`Nginx::start_again`] starts it again on the same port. Dropping it stops it,
//! also on panic, and a panicking test gets nginx's error log printed.
//!
//! Without an nginx binary, [`Nginx::start`] prints one line and returns `None` (the test
//! passes), unless `REQUIRE_REAL_SERVERS=1`, where it panics: CI installs the Debian package
//! `nginx`. `NGINX=/path/to/nginx` picks a binary; otherwise `nginx` is looked up on `PATH`,
//! then in `/usr/sbin` and `/usr/local/sbin`.
//!
//! nginx 1.22's names: h2c is `listen ... http2;` (the `http2 on;` directive came in 1.25.1),
//! and `http2_max_requests` / `http2_idle_timeout` are obsolete since 1.19.7, replaced for
//! HTTP/2 too by `keepalive_requests` / `keepalive_timeout`.
#![allow(dead_code, unreachable_pub)]

#[path = "real.rs"]
mod real;

use real::{free_port, running_as_root};

use std::{
    fmt::Write as _,
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long nginx may take to accept connections after it was started.
const START_BOUND: Duration = Duration::from_secs(10);
/// How long a graceful stop (`SIGQUIT`) may take before `SIGTERM`, then `SIGKILL`.
const QUIT_BOUND: Duration = Duration::from_secs(5);
/// Lines of the error log printed on failure.
const LOG_TAIL: usize = 200;

/// The protocol nginx serves on its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/2 with prior knowledge, without TLS (`listen ... http2;`).
    H2c,
    /// HTTP/1.1.
    Http1,
}

/// What the test asks of nginx.
#[derive(Clone, Debug)]
pub struct Config {
    protocol: Protocol,
    directives: Vec<String>,
}

impl Config {
    /// HTTP/2 without TLS.
    pub fn h2c() -> Self {
        Self {
            protocol: Protocol::H2c,
            directives: Vec::new(),
        }
    }

    /// HTTP/1.1.
    pub fn http1() -> Self {
        Self {
            protocol: Protocol::Http1,
            directives: Vec::new(),
        }
    }

    /// Adds a directive to the `server` block, e.g. `"keepalive_requests 200;"`.
    pub fn directive(mut self, directive: &str) -> Self {
        self.directives.push(directive.to_owned());
        self
    }

    /// The whole `nginx.conf` for nginx in `dir` on `port`.
    fn render(&self, dir: &Path, port: u16) -> String {
        let d = dir.display();
        let mut conf = String::new();
        conf.push_str("daemon off;\nmaster_process on;\nworker_processes 1;\n");
        if running_as_root() {
            // As root, nginx would otherwise run its workers as `nobody`, who cannot enter
            // this directory (a temp dir owned by root).
            conf.push_str("user root;\n");
        }
        let _ = writeln!(conf, "pid {d}/nginx.pid;");
        let _ = writeln!(conf, "error_log {d}/error.log notice;");
        conf.push_str("events {\n    worker_connections 1024;\n}\n");
        conf.push_str("http {\n    access_log off;\n");
        for (directive, sub) in [
            ("client_body_temp_path", "client_body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        ] {
            let _ = writeln!(conf, "    {directive} {d}/{sub};");
        }
        let listen = match self.protocol {
            Protocol::H2c => " http2",
            Protocol::Http1 => "",
        };
        conf.push_str("    server {\n");
        let _ = writeln!(conf, "        listen 127.0.0.1:{port}{listen};");
        for directive in &self.directives {
            let _ = writeln!(conf, "        {directive}");
        }
        conf.push_str("        location / {\n            return 200 \"ok\";\n        }\n");
        conf.push_str("    }\n}\n");
        conf
    }
}

/// The nginx binary: `$NGINX` when set (none if that is not a file), else `nginx` on `PATH`,
/// else `/usr/sbin/nginx` or `/usr/local/sbin/nginx`.
pub fn binary() -> Option<PathBuf> {
    real::binary("NGINX", "nginx", &["/usr/sbin", "/usr/local/sbin"])
}

/// A new empty directory for nginx, with its `logs` folder.
fn temp_dir() -> PathBuf {
    let dir = real::temp_dir("nginx");
    fs::create_dir_all(dir.join("logs")).expect("create nginx's logs dir");
    dir
}

/// A running nginx (master process and its workers) owned by one test.
#[derive(Debug)]
pub struct Nginx {
    binary: PathBuf,
    dir: PathBuf,
    config: Config,
    port: u16,
    master: Option<Child>,
}

impl Nginx {
    /// Starts nginx with `config` on a free port and waits until it accepts connections.
    /// `None` (after printing one line) when nginx is not installed, unless
    /// `REQUIRE_REAL_SERVERS=1`.
    ///
    /// # Panics
    ///
    /// If nginx is missing while required, or does not start (its error log is printed).
    pub async fn start(config: Config) -> Option<Self> {
        let Some(binary) = binary() else {
            real::missing("nginx", "nginx", "NGINX");
            return None;
        };
        let mut nginx = Self {
            binary,
            dir: temp_dir(),
            config,
            port: 0,
            master: None,
        };
        // A port found free may be taken before nginx binds it: then try another.
        for attempt in 1..=5 {
            nginx.port = free_port();
            match nginx.launch().await {
                Ok(()) => return Some(nginx),
                Err(log) if log.contains("Address already in use") && attempt < 5 => continue,
                Err(log) => panic!("nginx did not start on port {}:\n{log}", nginx.port),
            }
        }
        unreachable!()
    }

    /// The address nginx listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The temporary directory holding the configuration and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CPU time nginx's master and workers have used so far (Linux: the run time in
    /// `/proc/<pid>/schedstat`, in nanoseconds); `None` where it cannot be read.
    pub fn cpu_time(&self) -> Option<Duration> {
        let master = self.master.as_ref()?.id();
        let mut total = 0;
        for entry in fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            // The parent's pid is the second field after the command name (in parentheses).
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let parent = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if pid == master || parent == Some(master) {
                // A worker may have exited since the listing: it counts for nothing.
                total += run_time(&format!("/proc/{pid}/schedstat")).unwrap_or(0);
            }
        }
        Some(Duration::from_nanos(total))
    }

    /// Tells nginx to reload its configuration (`nginx -s reload`, `SIGHUP` to the master):
    /// new workers start, the old ones finish gracefully.
    ///
    /// # Panics
    ///
    /// If nginx is not running or the signal could not be sent.
    pub async fn reload(&self) {
        self.signal("reload").await;
    }

    /// Stops nginx gracefully (`SIGQUIT`), escalating to `SIGTERM` then `SIGKILL` if it takes
    /// longer than 5 s; returns once the master process has exited. Does nothing if stopped.
    pub async fn stop(&mut self) {
        if self.master.is_none() {
            return;
        }
        self.signal("quit").await;
        if self.wait_exit(QUIT_BOUND).await {
            return;
        }
        eprintln!("nginx: no exit within {QUIT_BOUND:?} of SIGQUIT; sending SIGTERM");
        self.signal("stop").await;
        if !self.wait_exit(QUIT_BOUND).await {
            self.kill();
        }
    }

    /// Starts nginx again, after [`stop`](Self::stop), on the same port with the same
    /// configuration; returns once it accepts connections.
    ///
    /// # Panics
    ///
    /// If it is still running or does not start.
    pub async fn start_again(&mut self) {
        assert!(self.master.is_none(), "start_again: nginx is still running");
        if let Err(log) = self.launch().await {
            panic!("nginx did not start again on port {}:\n{log}", self.port);
        }
    }

    /// The last lines of nginx's error log (and of its standard error).
    pub fn error_log(&self) -> String {
        let mut text = String::new();
        for name in ["error.log", "stderr.log"] {
            let content = fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            let _ = writeln!(text, "--- nginx {name} (last {} lines)", tail.len());
            for line in tail {
                let _ = writeln!(text, "{line}");
            }
        }
        text
    }

    /// Writes the configuration and starts the master process; waits until the port accepts
    /// connections. On failure returns the logs.
    async fn launch(&mut self) -> Result<(), String> {
        let conf = self.dir.join("nginx.conf");
        fs::write(&conf, self.config.render(&self.dir, self.port)).expect("write nginx.conf");
        let _ = fs::remove_file(self.dir.join("error.log"));
        let stderr = fs::File::create(self.dir.join("stderr.log")).expect("create stderr.log");
        let master = Command::new(&self.binary)
            // The client's allocator and its settings (a bench run with `LD_PRELOAD` or
            // `GLIBC_TUNABLES`) are not nginx's.
            .env_remove("LD_PRELOAD")
            .env_remove("GLIBC_TUNABLES")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("cannot run {}: {error}", self.binary.display()))?;
        self.master = Some(master);
        let deadline = Instant::now() + START_BOUND;
        loop {
            if let Some(status) = self.master.as_mut().and_then(|m| m.try_wait().ok()?) {
                self.master = None;
                return Err(format!("nginx exited: {status}\n{}", self.error_log()));
            }
            // The pid file is written before the workers accept, so `reload` works after.
            if self.dir.join("nginx.pid").exists()
                && TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "nginx did not accept within {START_BOUND:?}\n{}",
                    self.error_log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `nginx -s <what>` with this instance's prefix and configuration.
    async fn signal(&self, what: &str) {
        let output = tokio::process::Command::new(&self.binary)
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-s")
            .arg(what)
            .output()
            .await
            .expect("run nginx -s");
        assert!(
            output.status.success(),
            "nginx -s {what} failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.error_log()
        );
    }

    /// Waits at most `bound` for the master to exit; whether it did.
    async fn wait_exit(&mut self, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            match self.master.as_mut().map(Child::try_wait) {
                None | Some(Ok(Some(_)) | Err(_)) => {
                    self.master = None;
                    return true;
                }
                Some(Ok(None)) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        false
    }

    /// Kills the master (`SIGKILL`); the last resort after `SIGQUIT` and `SIGTERM` (a worker
    /// that ignored both would be left behind).
    fn kill(&mut self) {
        if let Some(mut master) = self.master.take() {
            let _ = master.kill();
            let _ = master.wait();
        }
    }

    /// The blocking stop of `Drop`: `SIGQUIT`, then `SIGTERM`, then `SIGKILL`.
    fn stop_blocking(&mut self) {
        for (what, bound) in [("quit", QUIT_BOUND), ("stop", QUIT_BOUND)] {
            let Some(master) = self.master.as_mut() else {
                return;
            };
            if matches!(master.try_wait(), Ok(Some(_)) | Err(_)) {
                self.master = None;
                return;
            }
            let _ = Command::new(&self.binary)
                .arg("-p")
                .arg(&self.dir)
                .arg("-c")
                .arg(self.dir.join("nginx.conf"))
                .args(["-s", what])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + bound;
            while Instant::now() < deadline {
                if matches!(master.try_wait(), Ok(Some(_)) | Err(_)) {
                    self.master = None;
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.kill();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("nginx on {}:", self.addr());
            eprintln!("{}", self.error_log());
        }
        self.stop_blocking();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The first field of a `schedstat` file: nanoseconds spent running.
pub fn run_time(schedstat: &str) -> Option<u64> {
    fs::read_to_string(schedstat)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
