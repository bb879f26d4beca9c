//! Soak test: three real HTTP/2 servers on 127.0.0.1 are killed, told to go away and
//! restarted at random while clients send requests through persistent connections behind
//! tower's p2c `Balance`, for a fixed time. No request may hang, nothing may panic, and once
//! everything is closed no task, file descriptor or notable memory may remain.
//!
//! Brief by default (3 s, 8 clients), so it runs with every `cargo test`. A long run:
//!
//! ```text
//! SOAK_SECS=600 SOAK_CLIENTS=32 cargo test --release --test soak -- --nocapture
//! ```
//!
//! `SOAK_SEED` seeds the chaos schedule and the layers' jitter (the request timing is real
//! time, so a seed repeats the schedule of faults, not the exact interleaving).
//!
//! This binary holds this one test only: it counts the runtime's live tasks and the process's
//! open file descriptors, which another test running at the same time would disturb.

#[path = "support/h2server.rs"]
mod h2server;
mod support;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::Range,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use h2server::H2Server;
use http::StatusCode;
use persistent_connection::{
    Event, PersistentConnection, PersistentConnectionLayer,
    http::{Http2Connection, Http2Connector},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use support::{Body, get_with_status};
use tokio::{
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout},
};
use tower::{
    balance::p2c::Balance,
    discover::ServiceList,
    load::{CompleteOnResponse, PendingRequests},
};

type Conn = Http2Connection<Body>;
type Svc = PersistentConnection<Conn>;

/// How many servers (and persistent connections, one per server).
const SERVERS: usize = 3;
/// The retry delay of every persistent connection (jittered by the default ±30 %).
const RETRY_DELAY: Duration = Duration::from_millis(100);
/// The bound on one connection attempt (a refused connect on loopback fails at once).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The chaos task waits this long (in ms, uniformly) between two actions.
const CHAOS_PAUSE_MS: Range<u64> = 20..200;
/// The share of actions on a running server that send `GOAWAY` instead of killing it.
const GOAWAY_SHARE: f64 = 0.2;
/// A request that has neither succeeded nor failed after this long has hung.
///
/// The longest legitimate wait: all three servers are down for at most one chaos pause
/// (200 ms: when all are down, the next action restarts one), then the restarted server's
/// connection waits out at most one retry delay (130 ms with jitter) and connects on
/// loopback (bounded by the 500 ms connect timeout, in practice a millisecond). Under a
/// second in all; 5 s leaves room for a loaded machine (the run prints the longest latency).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many requests of each client may fail per fault (kill or `GOAWAY`).
/// Measured: about 0.4.
const ERRORS_PER_CLIENT_AND_FAULT: u64 = 4;
/// The bound on everything that follows the run: reconnecting, closing, settling.
const SETTLE_BOUND: Duration = Duration::from_secs(10);
/// Memory growth over the run above this fails the test (reported, not tightly bounded:
/// allocators keep freed memory).
const RSS_GROWTH_LIMIT_KIB: u64 = 50 * 1024;

/// Panics anywhere in the process (a caught panic counts too), counted by a panic hook.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// The run's size, from the environment.
#[derive(Debug)]
struct Config {
    secs: u64,
    clients: usize,
    seed: u64,
}

impl Config {
    fn from_env() -> Self {
        Self {
            secs: env_or("SOAK_SECS", 3),
            clients: env_or("SOAK_CLIENTS", 8),
            // With this seed the default 3 s schedule both kills servers and sends `GOAWAY`.
            seed: env_or("SOAK_SEED", 5),
        }
    }
}

fn env_or<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a valid number")),
        Err(_) => default,
    }
}

// === The clients ===

/// What one client (or all of them) saw.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    /// Answered by the server its connection goes to, with the request's own path.
    ok: u64,
    /// Failed with an error of the HTTP/2 connection (hyper's): the request was on a
    /// connection that died or was told to go away.
    conn_errors: u64,
    /// Neither answered nor failed within [`REQUEST_TIMEOUT`].
    hung: u64,
    /// Answered, but not with the expected body (or not 200).
    wrong: u64,
    /// Failed with any other error: a connect error or `Closed` delivered to a request, a
    /// call without readiness, ... Each distinct text with its count.
    other_errors: BTreeMap<String, u64>,
    /// The longest time a request took, hung ones excepted.
    max_latency: Duration,
}

impl Tally {
    fn add(&mut self, other: Self) {
        self.sent += other.sent;
        self.ok += other.ok;
        self.conn_errors += other.conn_errors;
        self.hung += other.hung;
        self.wrong += other.wrong;
        for (text, count) in other.other_errors {
            *self.other_errors.entry(text).or_default() += count;
        }
        self.max_latency = self.max_latency.max(other.max_latency);
    }

    fn other_error_count(&self) -> u64 {
        self.other_errors.values().sum()
    }
}

/// Whether `body` is what server `name` answers to `path` through a connection whose layer
/// is named `name` too: `"<name> http://<name><path>"`. A request delivered over another
/// server's connection, or a mixed-up answer, does not match.
fn answered_by_its_server(body: &str, path: &str) -> bool {
    let Some((name, uri)) = body.split_once(' ') else {
        return false;
    };
    (0..SERVERS).any(|i| name == server_name(i)) && uri == format!("http://{name}{path}")
}

/// Whether a hyper error (the HTTP/2 connection's) is anywhere in `error`'s source chain.
fn is_connection_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<hyper::Error>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// One client: its own p2c balancer over clones of the three persistent connections, one
/// request at a time until `deadline`.
async fn client(id: usize, endpoints: Vec<Svc>, deadline: Instant) -> Tally {
    let endpoints: Vec<_> = endpoints
        .into_iter()
        .map(|svc| PendingRequests::new(svc, CompleteOnResponse::default()))
        .collect();
    let mut balance = Balance::new(ServiceList::new(endpoints));
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        tally.sent += 1;
        let path = format!("/client-{id}/{}", tally.sent);
        let started = Instant::now();
        let outcome = timeout(REQUEST_TIMEOUT, get_with_status(&mut balance, &path)).await;
        let Ok(outcome) = outcome else {
            tally.hung += 1;
            continue;
        };
        tally.max_latency = tally.max_latency.max(started.elapsed());
        match outcome {
            Ok((StatusCode::OK, body)) if answered_by_its_server(&body, &path) => tally.ok += 1,
            Ok(_) => tally.wrong += 1,
            Err(error) if is_connection_error(&*error) => tally.conn_errors += 1,
            Err(error) => *tally.other_errors.entry(error.to_string()).or_default() += 1,
        }
    }
    tally
}

// === The chaos ===

/// What the chaos task did.
#[derive(Debug, Default)]
struct ChaosLog {
    kills: u64,
    restarts: u64,
    goaways: u64,
    /// The longest stretch with every server down.
    longest_all_down: Duration,
}

/// Until `deadline`, every 20-200 ms picks a server at random: a running one is killed (or,
/// one time in five, told to go away), a dead one restarted on its port. When all are down
/// the next action necessarily restarts one. At the deadline every dead server is restarted.
async fn chaos(servers: Vec<H2Server>, seed: u64, deadline: Instant) -> ChaosLog {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut up = vec![true; servers.len()];
    let mut log = ChaosLog::default();
    let mut all_down_since = None;
    loop {
        let pause = Duration::from_millis(rng.random_range(CHAOS_PAUSE_MS));
        sleep_until((Instant::now() + pause).min(deadline)).await;
        if Instant::now() >= deadline {
            break;
        }
        let i = rng.random_range(0..servers.len());
        if !up[i] {
            servers[i].restart().await;
            up[i] = true;
            log.restarts += 1;
        } else if rng.random_bool(GOAWAY_SHARE) {
            servers[i].goaway();
            log.goaways += 1;
        } else {
            servers[i].kill().await;
            up[i] = false;
            log.kills += 1;
        }
        match (up.iter().any(|&up| up), all_down_since) {
            (false, None) => all_down_since = Some(Instant::now()),
            (true, Some(since)) => {
                log.longest_all_down = log.longest_all_down.max(since.elapsed());
                all_down_since = None;
            }
            _ => {}
        }
    }
    for (server, up) in servers.iter().zip(&mut up) {
        if !*up {
            server.restart().await;
            *up = true;
            log.restarts += 1;
        }
    }
    if let Some(since) = all_down_since {
        log.longest_all_down = log.longest_all_down.max(since.elapsed());
    }
    log
}

// === Servers, process measures ===

fn server_name(i: usize) -> String {
    format!("s{i}")
}

/// A free port of 127.0.0.1 below the kernel's ephemeral range (`ip_local_port_range`), or
/// any free port if that range cannot be read.
///
/// A server that is down leaves its port unbound, and clients keep connecting to it: a port
/// inside the ephemeral range could be picked as the source port of such a connect, which
/// then connects to itself (TCP simultaneous open) and holds the port, so the restart could
/// not bind it. A port outside that range is never a source port.
fn port_outside_the_ephemeral_range(rng: &mut StdRng) -> SocketAddr {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok());
    if let Some(low) = low.filter(|&low| low > 12_000) {
        for _ in 0..1000 {
            let port = rng.random_range(10_000..low);
            let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
            if std::net::TcpListener::bind(addr).is_ok() {
                return addr;
            }
        }
    }
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
}

/// The number of file descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .count()
}

/// The resident set size of this process, in KiB (`VmRSS`: `statm`'s resident pages, in KiB).
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Counts every panic of the process, then reports it as the default hook does.
fn count_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
}

/// Re-checks `done` every 10 ms until it holds or `bound` has passed; returns whether it held.
async fn settle(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `task`, counting it in `panics` if it panicked.
async fn join<T: Default>(task: JoinHandle<T>, panics: &mut u64) -> T {
    match task.await {
        Ok(value) => value,
        Err(error) if error.is_panic() => {
            *panics += 1;
            T::default()
        }
        Err(error) => panic!("a task of the soak test was cancelled: {error}"),
    }
}

// === The test ===

/// Three HTTP/2 servers, each behind one persistent connection, are killed, told to go away
/// and restarted at random while clients send requests through p2c balancers over the three
/// connections. Every request succeeds or fails with a connection error: none hangs, none
/// gets another error or a wrong answer, nothing panics. After the chaos every connection is
/// back and answers; after closing, the runtime's live tasks and the open file descriptors
/// are back to where they were before, and memory has not grown by more than 50 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_server_kills_and_restarts_hang_no_request_and_leak_nothing() {
    count_panics();
    let config = Config::from_env();
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let fds_before = open_fds();
    let rss_before = rss_kib();
    let mut rng = StdRng::seed_from_u64(config.seed);

    // Three servers and one persistent connection to each. Each layer is named after its
    // server, so the authority a request gets says which connection carried it.
    let mut servers = Vec::new();
    for i in 0..SERVERS {
        let addr = port_outside_the_ephemeral_range(&mut rng);
        servers.push(H2Server::start_on(&server_name(i), addr).await);
    }
    let connects = Arc::new(AtomicU64::new(0));
    let svcs: Vec<Svc> = servers
        .iter()
        .enumerate()
        .map(|(i, server)| {
            let connects = connects.clone();
            PersistentConnectionLayer::fixed_address(server.addr())
                .server_name(server_name(i))
                .retry_delay(|| RETRY_DELAY)
                .connect_timeout(CONNECT_TIMEOUT)
                // One seed per layer: the same seed would give the three the same delays.
                .rng_seed(config.seed.wrapping_add(i as u64))
                .on_event(move |event: &Event<_, _>| {
                    if let Event::Connected(_) = event {
                        connects.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .http2(Http2Connector::new())
        })
        .collect();
    let handles: Vec<_> = svcs.iter().map(Svc::handle).collect();
    for handle in &handles {
        timeout(SETTLE_BOUND, handle.connected())
            .await
            .expect("every persistent connection connects at the start")
            .expect("not closed");
    }

    // The run: chaos and clients until the deadline.
    let deadline = Instant::now() + Duration::from_secs(config.secs);
    let chaos_task = tokio::spawn(chaos(servers.clone(), rng.random(), deadline));
    let client_tasks: Vec<_> = (0..config.clients)
        .map(|id| tokio::spawn(client(id, svcs.clone(), deadline)))
        .collect();
    let mut panicked_tasks = 0;
    let mut tally = Tally::default();
    for task in client_tasks {
        tally.add(join(task, &mut panicked_tasks).await);
    }
    let log = join(chaos_task, &mut panicked_tasks).await;

    // After the chaos (every server is running again): every connection comes back and
    // answers. Problems are collected, so the report is printed whatever happens.
    let mut not_recovered = Vec::new();
    for (i, (svc, handle)) in svcs.iter().zip(&handles).enumerate() {
        let path = "/after-the-chaos";
        let recovered = match timeout(SETTLE_BOUND, handle.connected()).await {
            Ok(Ok(_)) => timeout(REQUEST_TIMEOUT, get_with_status(&mut svc.clone(), path)).await,
            other => {
                not_recovered.push(format!("{}: connected() gave {other:?}", server_name(i)));
                continue;
            }
        };
        match recovered {
            Ok(Ok((StatusCode::OK, body))) if body == format!("s{i} http://s{i}{path}") => {}
            other => not_recovered.push(format!("{}: {other:?}", server_name(i))),
        }
    }

    // Close every persistent connection, drop everything, stop the servers.
    for handle in &handles {
        timeout(SETTLE_BOUND, handle.close())
            .await
            .expect("close() resolves");
    }
    drop(handles);
    drop(svcs);
    for server in &servers {
        server.kill().await;
    }
    let answered: Vec<_> = servers
        .iter()
        .map(|server| server.counts().requests)
        .collect();
    drop(servers);

    let settled = settle(SETTLE_BOUND, || {
        metrics.num_alive_tasks() <= tasks_before && open_fds() <= fds_before
    })
    .await;
    let tasks_leaked = metrics.num_alive_tasks() as i64 - tasks_before as i64;
    let fds_leaked = open_fds() as i64 - fds_before as i64;
    let rss_after = rss_kib();
    let panics = PANICS.load(Ordering::SeqCst);

    println!(
        "soak: secs={} clients={} sent={} ok={} conn_errors={} hung={} panics={} \
         tasks_leaked={} fds_leaked={} rss_before={}KiB rss_after={}KiB kills={} \
         goaways={} restarts={} connects={} wrong={} other_errors={} max_latency_ms={} \
         longest_all_down_ms={} answered={:?} seed={}",
        config.secs,
        config.clients,
        tally.sent,
        tally.ok,
        tally.conn_errors,
        tally.hung,
        panics.max(panicked_tasks),
        tasks_leaked,
        fds_leaked,
        rss_before,
        rss_after,
        log.kills,
        log.goaways,
        log.restarts,
        connects.load(Ordering::Relaxed),
        tally.wrong,
        tally.other_error_count(),
        tally.max_latency.as_millis(),
        log.longest_all_down.as_millis(),
        answered,
        config.seed,
    );
    for (text, count) in &tally.other_errors {
        println!("soak: other error ({count}x): {text}");
    }

    assert_eq!(tally.hung, 0, "requests hung");
    assert!(
        not_recovered.is_empty(),
        "connections did not recover after the chaos: {not_recovered:?}"
    );
    assert_eq!(panics, 0, "panics in the process");
    assert_eq!(panicked_tasks, 0, "client or chaos tasks panicked");
    assert_eq!(tally.wrong, 0, "requests got a wrong answer");
    assert!(
        tally.other_errors.is_empty(),
        "requests failed with errors other than a connection error: {:?}",
        tally.other_errors
    );
    assert_eq!(
        tally.ok + tally.conn_errors,
        tally.sent,
        "every request either succeeded or failed with a connection error"
    );
    assert!(tally.ok > 0, "no request succeeded");
    // A fault fails the request each client has in flight on that connection, and maybe one
    // racing with its end; a connection kept in use after it died would fail many more.
    let faults = log.kills + log.goaways;
    assert!(
        tally.conn_errors <= ERRORS_PER_CLIENT_AND_FAULT * config.clients as u64 * faults,
        "an error storm: {} connection errors for {faults} faults and {} clients",
        tally.conn_errors,
        config.clients
    );
    assert!(log.kills > 0, "the chaos killed no server");
    assert!(
        settled,
        "tasks or file descriptors remain after close: {tasks_leaked} tasks, {fds_leaked} fds"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_LIMIT_KIB,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
}
