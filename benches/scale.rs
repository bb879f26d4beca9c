//! Scale: 10,000 persistent connections in one process to one local HTTP/2 server, against
//! 10,000 raw hyper HTTP/2 connections to the same kind of server.
//!
//! Cases (each the client process of one run; every connection is to 127.0.0.1):
//! - `raw`: `hyper::client::conn::http2` handshakes, each connection task spawned, the
//!   `SendRequest`s kept: the baseline;
//! - `layer`: `PersistentConnectionLayer` applied once per connection over a maker that does
//!   exactly what `raw` does (so the difference is the layer: its driver task, shared state,
//!   command channel and service);
//! - `connector`: `PersistentConnectionLayer::http2(Http2Connector::new()
//!   .keep_alive_interval(None))`, the crate's own HTTP/2 connector, keep-alive pings off
//!   like `raw` (the difference is the layer plus the connector's wrappers: its close signal,
//!   frame watcher, replay state);
//! - `connector_default`: the same with the connector's default keep-alive (a ping at most
//!   every 5 minutes, and none while no request is in flight).
//!
//! Figures per run:
//! - time to connect them all: from the first connect to the last connection up (for the
//!   layer: every `Handle::connected()` resolved; the connector also waits for the server's
//!   HTTP/2 preface, which a raw handshake does not), and the client's CPU time over that
//!   phase (less sensitive than the wall time to what else the machine runs);
//! - memory: live heap bytes the connect phase left allocated (a counting allocator,
//!   `allocation-counter`, on the only thread the client uses), and the growth of the
//!   process's resident set (`VmRSS`); per connection, and the case's excess over `raw`;
//! - CPU while all are idle: over an idle period (10 s; no requests, no pings), the process's
//!   CPU time (`/proc/self/task/*/schedstat`, in nanoseconds, and `/proc/self/stat`
//!   utime + stime, in ticks) and its context switches (`/proc/self/task/*/status`). A timer
//!   of the layer would show as wake-ups: voluntary context switches of the idle runtime.
//!
//! Each run is two child processes (this binary, re-executed): a server (`--serve`) and a
//! client (`--client <case> ...`), each with about 10,000 sockets, so each stays under the
//! file limit (20,000 here), whose soft value the bench raises to the hard one. A new server
//! per run means no TIME_WAIT of an earlier run is on the way. Both children exit when their
//! standard input closes, so they never outlive the bench; the bench also kills them when it
//! ends, on a panic too.
//!
//! Modes:
//! - `cargo bench --bench scale`: 10,000 connections, 10 s idle, 3 rounds of every case,
//!   interleaved; prints the medians and ratios (a few minutes);
//! - `cargo bench --bench scale -- --test`: 200 connections, 1 s idle, one round, asserting
//!   that every connection is up and still up after the idle period, answers a request, and
//!   that an idle client has (almost) no wake-ups.

#[path = "support/figures.rs"]
mod figures;
use figures::median;
use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Read as _, Write as _},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, Response, body::Incoming, client::conn::http2 as client_h2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use persistent_connection::{
    PersistentConnectionLayer, State,
    http::{Http2Connection, Http2Connector},
};
use tokio::net::{TcpSocket, TcpStream};
use tower::{Layer as _, service_fn};

type Body = Empty<Bytes>;
type Send = client_h2::SendRequest<Body>;

const CASES: [&str; 4] = ["raw", "layer", "connector", "connector_default"];

/// How long a client may take to connect everything before it gives up.
const CONNECT_BOUND: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--serve") => serve(),
        Some("--client") => client(&args[2..]),
        _ => {
            // `cargo bench` passes `--bench`; `cargo test --benches` passes neither: a test.
            let test = args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench");
            coordinate(test);
        }
    }
}

// === file limit ===

/// Raises the soft limit of open files to the hard one; returns the new soft limit.
fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(error) = setrlimit(Resource::Nofile, raised) {
            eprintln!(
                "could not raise the file limit to {:?}: {error}",
                limit.maximum
            );
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

// === the server (a child process) ===

/// Serves HTTP/2 on a fresh port of 127.0.0.1 (printed on stdout) until stdin closes.
fn serve() {
    raise_file_limit();
    exit_when_stdin_closes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind");
        // The kernel caps the backlog at net.core.somaxconn.
        let listener = socket.listen(65_535).expect("listen");
        println!("listening {}", listener.local_addr().expect("address"));
        std::io::stdout().flush().expect("stdout");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Body::new()))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(100)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// A thread that ends the process when stdin reaches its end: the bench that started this
/// process has ended (or closed it on purpose).
fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut buffer = [0u8; 64];
        while let Ok(n) = std::io::stdin().read(&mut buffer) {
            if n == 0 {
                break;
            }
        }
        std::process::exit(0);
    });
}

// === the client (a child process) ===

/// What a client run measured.
#[derive(Clone, Debug, Default)]
struct Measured {
    connections: usize,
    connect_ms: f64,
    connect_cpu_ms: f64,
    heap_bytes: i64,
    heap_blocks: i64,
    rss_kib: i64,
    idle_secs: f64,
    idle_cpu_ns: u64,
    idle_ticks: u64,
    idle_voluntary: u64,
    idle_involuntary: u64,
    still_up: usize,
}

impl Measured {
    fn to_line(&self) -> String {
        format!(
            "result connections={} connect_ms={:.1} connect_cpu_ms={:.1} heap_bytes={} heap_blocks={} rss_kib={} \
             idle_secs={} idle_cpu_ns={} idle_ticks={} idle_voluntary={} idle_involuntary={} still_up={}",
            self.connections,
            self.connect_ms,
            self.connect_cpu_ms,
            self.heap_bytes,
            self.heap_blocks,
            self.rss_kib,
            self.idle_secs,
            self.idle_cpu_ns,
            self.idle_ticks,
            self.idle_voluntary,
            self.idle_involuntary,
            self.still_up,
        )
    }

    fn parse(line: &str) -> Option<Self> {
        let mut m = Self::default();
        for field in line.strip_prefix("result ")?.split(' ') {
            let (key, value) = field.split_once('=')?;
            match key {
                "connections" => m.connections = value.parse().ok()?,
                "connect_ms" => m.connect_ms = value.parse().ok()?,
                "connect_cpu_ms" => m.connect_cpu_ms = value.parse().ok()?,
                "heap_bytes" => m.heap_bytes = value.parse().ok()?,
                "heap_blocks" => m.heap_blocks = value.parse().ok()?,
                "rss_kib" => m.rss_kib = value.parse().ok()?,
                "idle_secs" => m.idle_secs = value.parse().ok()?,
                "idle_cpu_ns" => m.idle_cpu_ns = value.parse().ok()?,
                "idle_ticks" => m.idle_ticks = value.parse().ok()?,
                "idle_voluntary" => m.idle_voluntary = value.parse().ok()?,
                "idle_involuntary" => m.idle_involuntary = value.parse().ok()?,
                "still_up" => m.still_up = value.parse().ok()?,
                _ => return None,
            }
        }
        Some(m)
    }
}

/// The connections of one case, kept alive while idle.
enum Kept {
    Raw(Vec<Send>),
    Layer(Vec<persistent_connection::PersistentConnection<Send>>),
    Connector(Vec<persistent_connection::PersistentConnection<Http2Connection<Body>>>),
}

/// `--client <case> <connections> <idle seconds> <server address>`: connects, measures,
/// prints one `result ...` line, exits.
fn client(args: &[String]) {
    let [case, n, idle, address] = args else {
        panic!("usage: --client <case> <connections> <idle seconds> <address>");
    };
    let n: usize = n.parse().expect("connections");
    let idle = Duration::from_secs_f64(idle.parse().expect("idle seconds"));
    let address: SocketAddr = address.parse().expect("address");
    let limit = raise_file_limit();
    assert!(
        limit >= n as u64 + 64,
        "the file limit ({limit}) is too low for {n} connections: raise the hard limit \
         (`ulimit -Hn`) to at least {}",
        n + 64
    );
    exit_when_stdin_closes();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    // Connect, counting what stays allocated.
    let rss_before = rss_kib();
    let cpu_before = Usage::now().cpu_ns;
    let mut kept = None;
    let mut connect = Duration::ZERO;
    let heap = allocation_counter::measure(|| {
        let started = Instant::now();
        kept = Some(runtime.block_on(async {
            tokio::time::timeout(CONNECT_BOUND, connect_all(case, n, address))
                .await
                .unwrap_or_else(|_| {
                    panic!("{case}: {n} connections not up within {CONNECT_BOUND:?}")
                })
        }));
        connect = started.elapsed();
    });
    let connect_cpu = Usage::now().cpu_ns - cpu_before;
    let rss_after = rss_kib();
    let kept = kept.expect("connected");

    // Let the last frames (SETTINGS acknowledgements) pass, then measure the idle period.
    runtime.block_on(async { tokio::time::sleep(Duration::from_secs(1)).await });
    let before = Usage::now();
    runtime.block_on(async { tokio::time::sleep(idle).await });
    let after = Usage::now();

    // Still up, and answering.
    let still_up = runtime.block_on(check(&kept, address));
    let measured = Measured {
        connections: n,
        connect_ms: connect.as_secs_f64() * 1e3,
        connect_cpu_ms: connect_cpu as f64 / 1e6,
        heap_bytes: heap.bytes_current,
        heap_blocks: heap.count_current,
        rss_kib: rss_after - rss_before,
        idle_secs: idle.as_secs_f64(),
        idle_cpu_ns: after.cpu_ns - before.cpu_ns,
        idle_ticks: after.ticks - before.ticks,
        idle_voluntary: after.voluntary - before.voluntary,
        idle_involuntary: after.involuntary - before.involuntary,
        still_up,
    };
    println!("{}", measured.to_line());
    std::io::stdout().flush().expect("stdout");
    // Tearing down 10,000 connections tells nothing: leave that to the kernel.
    std::process::exit(0);
}

/// One raw HTTP/2 connection: dial with `TCP_NODELAY` (as the crate's connector does),
/// handshake, spawn the connection task.
async fn raw_connect(
    address: SocketAddr,
) -> Result<Send, Box<dyn std::error::Error + Sync + std::marker::Send>> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (send, connection) = client_h2::Builder::new(TokioExecutor::new())
        .handshake::<_, Body>(TokioIo::new(stream))
        .await?;
    tokio::spawn(connection);
    Ok(send)
}

async fn connect_all(case: &str, n: usize, address: SocketAddr) -> Kept {
    match case {
        "raw" => {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..n {
                tasks.spawn(raw_connect(address));
            }
            let mut sends = Vec::with_capacity(n);
            while let Some(result) = tasks.join_next().await {
                sends.push(result.expect("task").expect("raw connect"));
            }
            Kept::Raw(sends)
        }
        "layer" => {
            let layer = PersistentConnectionLayer::fixed_address(address);
            let maker = service_fn(raw_connect);
            let mut services = Vec::with_capacity(n);
            for _ in 0..n {
                services.push(layer.layer(maker));
            }
            for service in &services {
                service.handle().connected().await.expect("connected");
            }
            Kept::Layer(services)
        }
        "connector" | "connector_default" => {
            let layer = PersistentConnectionLayer::fixed_address(address);
            let mut services = Vec::with_capacity(n);
            for _ in 0..n {
                let connector = match case {
                    "connector" => Http2Connector::<Body>::new().keep_alive_interval(None),
                    _ => Http2Connector::<Body>::new(),
                };
                services.push(layer.clone().http2(connector));
            }
            for service in &services {
                service.handle().connected().await.expect("connected");
            }
            Kept::Connector(services)
        }
        _ => panic!("unknown case {case}"),
    }
}

/// How many connections are still up; sends a request on the first and the last.
async fn check(kept: &Kept, address: SocketAddr) -> usize {
    let uri = format!("http://{address}/");
    let request = || Request::get(&uri).body(Body::new()).expect("request");
    match kept {
        Kept::Raw(sends) => {
            for send in [sends.first(), sends.last()].into_iter().flatten() {
                let mut send = send.clone();
                send.ready().await.expect("ready");
                send.send_request(request()).await.expect("response");
            }
            sends.iter().filter(|s| !s.is_closed()).count()
        }
        Kept::Layer(services) => {
            for service in [services.first(), services.last()].into_iter().flatten() {
                let mut send = service.handle().current_connection().expect("connected");
                send.ready().await.expect("ready");
                send.send_request(request()).await.expect("response");
            }
            services
                .iter()
                .filter(|s| s.handle().state() == State::Connected)
                .count()
        }
        Kept::Connector(services) => {
            use tower::{Service, ServiceExt};
            for service in [services.first(), services.last()].into_iter().flatten() {
                let mut service = service.clone();
                service
                    .ready()
                    .await
                    .expect("ready")
                    .call(request())
                    .await
                    .expect("response");
            }
            services
                .iter()
                .filter(|s| s.handle().state() == State::Connected)
                .count()
        }
    }
}

// === /proc ===

/// The process's resident set, in KiB.
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// CPU time and context switches of the whole process (every thread).
struct Usage {
    cpu_ns: u64,
    ticks: u64,
    voluntary: u64,
    involuntary: u64,
}

impl Usage {
    fn now() -> Self {
        let mut usage = Self {
            cpu_ns: 0,
            ticks: 0,
            voluntary: 0,
            involuntary: 0,
        };
        for task in std::fs::read_dir("/proc/self/task")
            .expect("/proc/self/task")
            .flatten()
        {
            let path = task.path();
            if let Ok(schedstat) = std::fs::read_to_string(path.join("schedstat")) {
                usage.cpu_ns += schedstat
                    .split_whitespace()
                    .next()
                    .and_then(|ns| ns.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            if let Ok(status) = std::fs::read_to_string(path.join("status")) {
                for line in status.lines() {
                    let value = |prefix: &str| {
                        line.strip_prefix(prefix)
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    };
                    if let Some(v) = value("voluntary_ctxt_switches:") {
                        usage.voluntary += v;
                    }
                    if let Some(v) = value("nonvoluntary_ctxt_switches:") {
                        usage.involuntary += v;
                    }
                }
            }
        }
        // utime and stime (fields 14 and 15), counting from after the command's parentheses.
        let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        usage.ticks = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
            .sum();
        usage
    }
}

// === the coordinator ===

/// A child process killed (and reaped) when dropped: at the end, and on a panic.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_self(args: &[&str]) -> ChildGuard {
    let exe = std::env::current_exe().expect("this binary");
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a child process");
    ChildGuard(child)
}

/// One run: a fresh server, one client of `case`.
fn run(case: &str, n: usize, idle: Duration) -> Measured {
    let mut server = spawn_self(&["--serve"]);
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().expect("server stdout"))
        .read_line(&mut line)
        .expect("the server's address");
    let address = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("the server said {line:?}"))
        .to_string();
    let mut client = spawn_self(&[
        "--client",
        case,
        &n.to_string(),
        &idle.as_secs_f64().to_string(),
        &address,
    ]);
    // Bounded: the client gives up on its own after CONNECT_BOUND; this is a backstop.
    let deadline = Instant::now() + CONNECT_BOUND + idle + Duration::from_secs(60);
    loop {
        match client.0.try_wait().expect("the client's status") {
            Some(status) => {
                assert!(status.success(), "{case}: the client failed ({status})");
                break;
            }
            None if Instant::now() > deadline => panic!("{case}: the client ran too long"),
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let mut output = String::new();
    client
        .0
        .stdout
        .take()
        .expect("client stdout")
        .read_to_string(&mut output)
        .expect("the client's output");
    drop(server);
    output
        .lines()
        .find_map(Measured::parse)
        .unwrap_or_else(|| panic!("{case}: no result in {output:?}"))
}

fn coordinate(test: bool) {
    let (n, idle, rounds) = if test {
        (200, Duration::from_secs(1), 1)
    } else {
        (10_000, Duration::from_secs(10), 3)
    };
    let limit = raise_file_limit();
    println!(
        "scale: {n} connections per client, {} s idle, {rounds} round(s) of {CASES:?}; file limit {limit}",
        idle.as_secs_f64()
    );
    let started = Instant::now();
    // results[case][round]
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); CASES.len()];
    for round in 0..rounds {
        for (index, case) in CASES.iter().enumerate() {
            let measured = run(case, n, idle);
            println!("round {}: {case:<18} {}", round + 1, measured.to_line());
            assert_eq!(measured.still_up, n, "{case}: connections lost while idle");
            if test {
                // A periodic timer would wake the idle client every period; allow a few
                // wake-ups (the end of the idle sleep itself, the system).
                assert!(
                    measured.idle_voluntary <= 10,
                    "{case}: {} wake-ups while idle for {idle:?}",
                    measured.idle_voluntary
                );
            }
            results[index].push(measured);
        }
    }
    report(n, idle, rounds, &results);
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
}

fn report(n: usize, idle: Duration, rounds: usize, results: &[Vec<Measured>]) {
    let med = |case: usize, f: &dyn Fn(&Measured) -> f64| {
        let values: Vec<f64> = results[case].iter().map(f).collect();
        median(&values)
    };
    let per = |v: f64| v / n as f64;
    println!(
        "\n{n} connections, medians of {rounds} run(s) per case; per connection = total / {n}; \
         excess = case - raw, per connection (the raw figure of the same round).\n"
    );
    println!(
        "| case | connect all (ms) | x raw | client CPU to connect (ms) | x raw | heap/conn (B) | heap blocks/conn | excess heap/conn (B) | RSS/conn (B) | excess RSS/conn (B) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (index, case) in CASES.iter().enumerate() {
        // Ratios and excesses per round (against that round's raw run), then the median.
        let ratio = |f: &dyn Fn(&Measured) -> f64| {
            let values: Vec<f64> = results[index]
                .iter()
                .zip(&results[0])
                .map(|(m, raw)| f(m) / f(raw))
                .collect();
            median(&values)
        };
        let excess = |f: &dyn Fn(&Measured) -> f64| {
            let values: Vec<f64> = results[index]
                .iter()
                .zip(&results[0])
                .map(|(m, raw)| per(f(m) - f(raw)))
                .collect();
            median(&values)
        };
        println!(
            "| {case} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
            med(index, &|m| m.connect_ms),
            ratio(&|m| m.connect_ms),
            med(index, &|m| m.connect_cpu_ms),
            ratio(&|m| m.connect_cpu_ms),
            per(med(index, &|m| m.heap_bytes as f64)),
            per(med(index, &|m| m.heap_blocks as f64)),
            excess(&|m| m.heap_bytes as f64),
            per(med(index, &|m| m.rss_kib as f64 * 1024.0)),
            excess(&|m| m.rss_kib as f64 * 1024.0),
        );
    }
    println!("\nConnect all, each run (wall ms / client CPU ms):\n");
    println!("| case | runs |");
    println!("|---|---|");
    for (index, case) in CASES.iter().enumerate() {
        let runs: Vec<String> = results[index]
            .iter()
            .map(|m| format!("{:.0} / {:.0}", m.connect_ms, m.connect_cpu_ms))
            .collect();
        println!("| {case} | {} |", runs.join(", "));
    }
    println!(
        "\nWhile idle ({} s, after a 1 s settle; no requests): the whole client process.\n",
        idle.as_secs_f64()
    );
    println!(
        "| case | CPU (ms, schedstat) | CPU (ticks of 10 ms) | voluntary switches | involuntary switches |"
    );
    println!("|---|---|---|---|---|");
    for (index, case) in CASES.iter().enumerate() {
        let runs = &results[index];
        let list =
            |f: &dyn Fn(&Measured) -> String| runs.iter().map(f).collect::<Vec<_>>().join(", ");
        println!(
            "| {case} | {} | {} | {} | {} |",
            list(&|m| format!("{:.3}", m.idle_cpu_ns as f64 / 1e6)),
            list(&|m| m.idle_ticks.to_string()),
            list(&|m| m.idle_voluntary.to_string()),
            list(&|m| m.idle_involuntary.to_string()),
        );
    }
}
