//! A balanced client over the replicas of a catalog, on loopback, in about 12 seconds.
//!
//! Three small hyper HTTP/2 servers (`a`, `b`, `c`) answer every request with their name,
//! after 10 ms. They are listed in an in-process catalog (`discovery::LocalCatalog`), and the
//! client is `replicas::Replicas::http2(catalog.watch(), layer, Http2Connector::new())
//! .balanced(1024)`: one persistent HTTP/2 connection per replica listed, each connecting as
//! soon as it is listed, tower's power-of-two-choices balancer over them (each measured by its
//! requests in flight), and a cloneable buffer in front. The demo sends 200 requests a second,
//! each in its own task with a timeout of 3 s, and the catalog changes under it:
//!
//! - at 3 s, `b` is killed (it stops accepting and aborts its connections) but stays listed:
//!   its close signal tells its driver at once, the replica turns `Pending`, and the balancer
//!   routes around it, never evicting it, while the driver retries every 300 ms;
//! - at 5 s, `b` is removed from the catalog: it leaves the balancer, and its driver stops;
//! - at 6 s, a fourth replica, `d`, starts and is listed: it connects and takes traffic,
//!   without any change on the client's side;
//! - at 8 s, `b` is back on its port and listed again: it connects and takes traffic again;
//! - at 12 s the traffic stops.
//!
//! Each replica's changes (listed, connected, connection lost, attempts failing, gone), each
//! failed or timed-out request and a line per second (the requests answered by each replica,
//! failed, timed out) are printed, and a summary ends the run, with each replica's state as
//! `ReplicaSet::states()` tells it.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example replicas
//! ```
//!
//! With `RUST_LOG=persistent_connection=debug` the crate's own log lines are printed too; each
//! names its replica (`api/b`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response, body::Incoming};
use persistent_connection::{
    BoxError, PersistentConnectionLayer, State,
    discovery::LocalCatalog,
    http::{Http2Connection, Http2Connector},
    replicas::{BalancedClient, ReplicaSet, Replicas},
};
use tokio::{
    task::JoinSet,
    time::{Instant, interval_at, timeout},
};
use tower::{Service, ServiceExt};

/// The replicas: `a`, `b` and `c` from the start, `d` added later.
const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const B: usize = 1;
const D: usize = 3;
/// When (in seconds since the start) `b` is killed, removed from the catalog, and listed
/// again once restarted; and when `d` is started and listed.
const KILL_B_AT: u64 = 3;
const REMOVE_B_AT: u64 = 5;
const ADD_D_AT: u64 = 6;
const RESTORE_B_AT: u64 = 8;
const SECONDS: u64 = 12;
const PER_SECOND: u64 = 200;
const REQUEST_EVERY: Duration = Duration::from_nanos(1_000_000_000 / PER_SECOND);
/// A request neither answered nor failed by then counts as timed out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long each replica takes to answer.
const REPLY_DELAY: Duration = Duration::from_millis(10);
const RETRY_DELAY: Duration = Duration::from_millis(300);

type Body = Empty<Bytes>;
type Client = BalancedClient<Request<Body>, Response<Incoming>>;
type Set = ReplicaSet<String, Http2Connection<Body>>;

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `println!`, after the time since the start.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:6.3}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[path = "support/h2.rs"]
mod h2;

use h2::Server;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    LazyLock::force(&START);

    // The replicas, listed in the catalog as they start.
    let catalog = LocalCatalog::<String, SocketAddr>::new();
    let mut servers = Vec::new();
    for name in &NAMES[..3] {
        servers.push(start(name, &catalog).await?);
    }

    // The client: one persistent connection per replica listed, balanced.
    let layer = PersistentConnectionLayer::new(catalog.clone())
        .server_name("api")
        .retry_delay(|| RETRY_DELAY);
    let replicas = Replicas::http2(catalog.watch(), layer, Http2Connector::new());
    let set = replicas.set();
    let client: Client = replicas.balanced(1024);
    let watcher = tokio::spawn(watch_replicas(set.clone()));

    let stats = Arc::new(Mutex::new(Stats::default()));
    let mut requests = JoinSet::new();
    let mut ticks = interval_at(*START + REQUEST_EVERY, REQUEST_EVERY);
    let mut n = 0;
    for t in 1..=SECONDS {
        for _ in 0..PER_SECOND {
            ticks.tick().await;
            n += 1;
            requests.spawn(request(client.clone(), n, stats.clone()));
        }
        if t < SECONDS {
            stats.lock().unwrap().status(t, &set);
        }
        match t {
            KILL_B_AT => {
                let b = &mut servers[B];
                log!("** killing b (on {}); it stays listed", b.address());
                b.kill().await;
            }
            REMOVE_B_AT => {
                log!("** removing b from the catalog");
                catalog.remove(&NAMES[B].to_owned());
            }
            ADD_D_AT => servers.push(start(NAMES[D], &catalog).await?),
            RESTORE_B_AT => {
                let b = &mut servers[B];
                b.restart().await?;
                catalog.insert(NAMES[B].to_owned(), b.address());
                log!("** b restarted on {} and listed again", b.address());
            }
            _ => {}
        }
    }
    log!("** traffic stopped after {n} requests");
    // Every request ends by itself: answered, failed, or timed out.
    requests.join_all().await;
    {
        let mut stats = stats.lock().unwrap();
        stats.status(SECONDS, &set);
        stats.summary(n, &servers);
    }

    println!("\nreplicas at the end (ReplicaSet::states()):");
    for (key, state) in set.states() {
        let Some(driver) = set.handle(&key).map(|handle| handle.stats()) else {
            continue;
        };
        println!(
            "  {key}: {}, attempts={} failed_attempts={} connections={} disconnections={}",
            describe(&state),
            driver.attempts,
            driver.failed_attempts,
            driver.connections,
            driver.disconnections,
        );
    }

    watcher.abort();
    for key in set.keys() {
        if let Some(handle) = set.handle(&key) {
            handle.close().await;
        }
    }
    log!("closed");
    Ok(())
}

/// Starts the replica `name` on a free port of 127.0.0.1, and lists it in the catalog.
async fn start(
    name: &'static str,
    catalog: &LocalCatalog<String, SocketAddr>,
) -> std::io::Result<Server> {
    let server = Server::start(name).await?;
    server.set_delay(REPLY_DELAY);
    catalog.insert(name.to_owned(), server.address());
    log!("** {name} started on {} and listed", server.address());
    Ok(server)
}

// === The client side ===

/// Sends `GET /n` and records which replica answered, or how it failed; gives up after
/// [`REQUEST_TIMEOUT`].
async fn request(mut client: Client, n: u64, stats: Arc<Mutex<Stats>>) {
    let sent = START.elapsed().as_secs_f64();
    let outcome = timeout(REQUEST_TIMEOUT, async {
        let request = Request::get(format!("/{n}")).body(Empty::new())?;
        let response = client.ready().await?.call(request).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>(String::from_utf8_lossy(&body).into_owned())
    })
    .await;
    let mut stats = stats.lock().unwrap();
    match outcome {
        Ok(Ok(name)) => {
            let replica = NAMES
                .iter()
                .position(|&replica| replica == name)
                .expect("every answer is a replica's name");
            stats.count(|tally| tally.ok[replica] += 1);
            let now = START.elapsed().as_secs_f64();
            let first = &mut stats.first_answer[replica];
            if first.is_none() && (replica != B || now >= RESTORE_B_AT as f64) {
                *first = Some(now);
            }
        }
        Ok(Err(error)) => {
            log!("request {n} (sent at {sent:.3}s) failed: {error}");
            stats.count(|tally| tally.failed += 1);
            stats.failed_sent.push(sent);
        }
        Err(_) => {
            log!("request {n} (sent at {sent:.3}s) timed out after {REQUEST_TIMEOUT:?}");
            stats.count(|tally| tally.timed_out += 1);
            stats.timed_out_sent.push(sent);
        }
    }
}

// === Watching the replicas ===

/// What [`watch_replicas`] last saw of a replica.
struct Seen {
    connected: bool,
    failed_attempts: u64,
    /// The text of the latest connect error printed.
    error: Option<String>,
}

/// Prints each replica's changes, as [`ReplicaSet`] shows them: listed, connected, connection
/// lost, an attempt failing (once per distinct error), no longer listed.
async fn watch_replicas(set: Set) {
    let mut seen = BTreeMap::<String, Seen>::new();
    loop {
        let states = set.states();
        for (key, state) in &states {
            let Some(driver) = set.handle(key).map(|handle| handle.stats()) else {
                continue;
            };
            let connected = *state == State::Connected;
            let seen = seen.entry(key.clone()).or_insert_with(|| {
                log!(
                    "   replica {key}: in the balancer's set, {}",
                    describe(state)
                );
                Seen {
                    connected,
                    failed_attempts: 0,
                    error: None,
                }
            });
            if connected != seen.connected {
                if connected {
                    log!("   replica {key}: connected");
                } else {
                    log!("   replica {key}: connection lost, now {}", describe(state));
                }
                seen.connected = connected;
            }
            if driver.failed_attempts > seen.failed_attempts {
                seen.failed_attempts = driver.failed_attempts;
                let error = driver.last_error.map(|error| error.to_string());
                if error.is_some() && error != seen.error {
                    log!(
                        "   replica {key}: attempt failed: {} (retrying every {RETRY_DELAY:?})",
                        error.as_deref().unwrap_or_default()
                    );
                    seen.error = error;
                }
            }
        }
        seen.retain(|key, seen| {
            let listed = states.iter().any(|(k, _)| k == key);
            if !listed {
                log!(
                    "   replica {key}: left the balancer's set, after {} failed attempt(s); its \
                     driver stops",
                    seen.failed_attempts
                );
            }
            listed
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A state, for people: `Waiting` with the time to its next attempt.
fn describe(state: &State) -> String {
    match state {
        State::Waiting { next_attempt, .. } => {
            let wait = next_attempt.saturating_duration_since(Instant::now());
            format!("Waiting (next attempt in {} ms)", wait.as_millis())
        }
        other => format!("{other:?}"),
    }
}

// === Bookkeeping ===

/// Requests answered per replica, failed, and timed out.
#[derive(Default)]
struct Tally {
    ok: [u64; NAMES.len()],
    failed: u64,
    timed_out: u64,
}

#[derive(Default)]
struct Stats {
    /// Since the latest status line.
    second: Tally,
    total: Tally,
    /// When each replica first answered, in seconds since the start (for `b`, once restored).
    first_answer: [Option<f64>; NAMES.len()],
    /// When the failed and the timed-out requests were sent, in seconds since the start.
    failed_sent: Vec<f64>,
    timed_out_sent: Vec<f64>,
}

impl Stats {
    /// Counts a request that ended, in this second's tally and in the total.
    fn count(&mut self, add: impl Fn(&mut Tally)) {
        add(&mut self.second);
        add(&mut self.total);
    }

    /// Prints the requests that ended since the previous status line, and the replicas in the
    /// balancer's set now.
    fn status(&mut self, t: u64, set: &Set) {
        let second = std::mem::take(&mut self.second);
        let mut line = format!("t={t:<2}s ");
        for (name, ok) in NAMES.iter().zip(second.ok) {
            line += &format!(" {name}={ok:<3}");
        }
        let (failed, timed_out) = (second.failed, second.timed_out);
        let listed = set.keys().join(",");
        println!("{line}  failed={failed} timed_out={timed_out}  set=[{listed}]");
    }

    fn summary(&self, sent: u64, servers: &[Server]) {
        let total = &self.total;
        println!("\nper replica:");
        for (i, name) in NAMES.iter().enumerate() {
            let accepted = servers
                .iter()
                .find(|server| server.name() == *name)
                .map_or(0, Server::accepted);
            println!(
                "  {name}: ok={:<5} (connections it accepted: {accepted})",
                total.ok[i]
            );
        }
        let ok: u64 = total.ok.iter().sum();
        let (failed, timed_out) = (total.failed, total.timed_out);
        println!("sent={sent} ok={ok} failed={failed} timed_out={timed_out}");
        let ended = ok + failed + timed_out;
        println!("accounted for: ok + failed + timed out = {ended} of {sent}");
        println!("failed: {}", spread(&self.failed_sent));
        println!("timed out: {}", spread(&self.timed_out_sent));
        let at = |i: usize| match self.first_answer[i] {
            Some(t) => format!("from {t:.2} s"),
            None => "never".to_owned(),
        };
        println!(
            "\nb, killed at {KILL_B_AT} s and removed at {REMOVE_B_AT} s, answered again {} \
             (listed again at {RESTORE_B_AT} s); d, listed at {ADD_D_AT} s, answered {}.",
            at(B),
            at(D)
        );
    }
}

/// When the requests in `sent` were sent: none, or the first and the last time.
fn spread(sent: &[f64]) -> String {
    let first = sent.iter().copied().reduce(f64::min);
    let last = sent.iter().copied().reduce(f64::max);
    match (first, last) {
        (Some(first), Some(last)) => {
            format!(
                "{} request(s), sent from {first:.3} s to {last:.3} s",
                sent.len()
            )
        }
        _ => "none".to_owned(),
    }
}
