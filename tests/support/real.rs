//! What the real third-party servers of the tests (`nginx.rs`, `dnsmasq.rs`, `etcd.rs`)
//! share: finding the binary, the rule for a missing one, a free loopback port, a temp dir of
//! their own. Included by each with `#[path]`.
//!
//! A missing binary makes the test print one line naming the Debian package and pass, unless
//! `REQUIRE_REAL_SERVERS=1` (as in CI), where it fails the test.
#![allow(dead_code, unreachable_pub)]

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// A server binary: `$<env>` when set (none if that is not a file), else `name` on `PATH`,
/// else in one of `dirs`.
pub fn binary(env: &str, name: &str, dirs: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The binary `name` (from the Debian package `package`, or `$<env>`) is missing: panics
/// under `REQUIRE_REAL_SERVERS=1`, else prints one line (the test then passes).
pub fn missing(name: &str, package: &str, env: &str) {
    if std::env::var("REQUIRE_REAL_SERVERS").is_ok_and(|v| v == "1") {
        panic!(
            "{name} not installed, and REQUIRE_REAL_SERVERS=1: install the Debian package \
             {package} (apt-get install {package}), or set {env}=/path/to/{name}"
        );
    }
    println!("skipped: {name} not installed (Debian package {package})");
}

/// A free port on 127.0.0.1 (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A new empty directory for a server named `server`, under the system's temp dir.
pub fn temp_dir(server: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "persistent-connection-{server}-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir).unwrap_or_else(|error| panic!("create {server}'s temp dir: {error}"));
    dir
}

/// Whether this process runs as root (effective uid 0, from `/proc/self/status`).
pub fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("Uid:"))?;
            let effective = line.split_whitespace().nth(2)?;
            Some(effective == "0")
        })
        .unwrap_or(false)
}
