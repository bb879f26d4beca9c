//! Recovery (BENCHMARKS.md, "Recovery"), with real hyper HTTP/2 servers on 127.0.0.1
//! (`tests/support/h2server.rs`, run on a runtime of their own) and real time.
//!
//! **Failover**: a client (`PersistentConnectionLayer::round_robin([a, b]).http2(..)`, retry
//! policy `Constant::new(500 ms)`, default jitter) sends requests back to back; the server its
//! connection is on is killed (its listener and connections dropped at once, no goodbye); the
//! figure is the time from the kill to the first successful request, answered by the other
//! server, and to the `Connected` event of the new connection. Each connection is at least
//! 0.8 s old when its server is killed, longer than the retry delay (at most 650 ms with the
//! jitter), so the reconnect is immediate (DESIGN S7); the killed server then listens again, so
//! that the next round can kill the other one.
//!
//! **Server back**: clients of one server, four per retry policy the crate ships (the
//! default, `Constant::new(1 s)`, `Exponential::new(100 ms, 2.0, 5 s)`, `Exponential::grpc()`,
//! `Exponential::grpc().give_up_after(4)`), each sending a request every 2 ms (waiting while
//! disconnected); the server is killed, stays down for D, listens again on its port; the figure
//! is the time from then to each client's first successful request. Before each kill every
//! connection is older than its policy's first delay (up to 13 s for the default 10 s), so the
//! first attempt follows the death at once, and the attempts then come at the policy's
//! schedule. The expected lag is computed from that schedule (100,000 draws of the jitter,
//! the driver's rule: the delay is armed before each attempt, the next attempt starts when it
//! expires; the first attempt at or after D succeeds); the measured one adds the connect and
//! one request.
//!
//! `cargo bench --bench recovery`: 30 kills; then 3 rounds with D = 2 s and 3 with D = 10 s,
//! interleaved (about 4 minutes in all). `cargo bench --bench recovery -- --test`: 3 kills and
//! one round with D = 0.5 s, one client per policy, without the long warm-up (so the default
//! policy's first attempt may wait the rest of its delay); asserts that every case recovered
//! (or gave up, for `give_up_after`) and that no request failed beyond the one in flight on a
//! killed connection per kill.
//!
//! Failed requests are counted and compared with the requests the servers' handler received:
//! a request the handler saw twice would be a resend of a request the server may have
//! processed (never allowed). `BENCH_VERBOSE=1` prints every kill of the failover part.

#[path = "../tests/support/chain.rs"]
mod chain;
#[path = "../tests/support/h2server.rs"]
mod h2server;
use chain::chain;

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2server::H2Server;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use persistent_connection::{
    BoxError, Closed, Event, PersistentConnection, PersistentConnectionLayer,
    http::{Http2Connection, Http2Connector},
    retry::{Constant, Exponential, RetryPolicy},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use tokio::{
    runtime::{Handle, Runtime},
    task::JoinHandle,
};
use tower::{Service, ServiceExt};

type Body = Empty<Bytes>;
type Client = PersistentConnection<Http2Connection<Body>>;

/// The layer's default jitter (±30 %), which the expected schedule draws.
const JITTER: f64 = 0.3;
/// A bound on one request, waiting for a connection included.
const REQUEST_BOUND: Duration = Duration::from_secs(60);

// === plumbing ===

/// Runs `future` on the servers' runtime and waits for it (the servers spawn their tasks
/// where they are started and restarted).
async fn on_servers<F>(servers: &Handle, future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    servers.spawn(future).await.expect("a server task panicked")
}

/// The outcome of one request.
enum Outcome {
    /// Answered by the server of this name.
    Ok(String),
    /// The persistent connection is closed (the policy gave up).
    Closed,
    Failed(String),
}

/// `GET /` through `svc`, waiting for a connection, the whole body read, bounded.
async fn get(svc: &mut Client) -> Outcome {
    let exchange = async {
        let request = Request::get("/").body(Empty::new()).unwrap();
        let response = svc.ready().await?.call(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok::<_, BoxError>((status, body))
    };
    match tokio::time::timeout(REQUEST_BOUND, exchange).await {
        Err(_) => Outcome::Failed(format!("no response within {REQUEST_BOUND:?}")),
        Ok(Err(error)) if Closed::find_in(&*error).is_some() => Outcome::Closed,
        Ok(Err(error)) => Outcome::Failed(chain(&*error)),
        Ok(Ok((StatusCode::OK, body))) => {
            let body = String::from_utf8_lossy(&body);
            Outcome::Ok(body.split(' ').next().unwrap_or_default().to_owned())
        }
        Ok(Ok((status, _))) => Outcome::Failed(status.to_string()),
    }
}

/// What one client's loop and events tell the bench.
#[derive(Debug, Default)]
struct Probe {
    /// Successes are looked for after this instant, from a server other than `except`.
    after: Option<Instant>,
    except: Option<String>,
    /// The first such success.
    first: Option<Instant>,
    /// The first `Connected` after `after`.
    connected: Option<Instant>,
    /// The first failed request after `after`.
    first_failure: Option<Instant>,
    /// The latest connection: when it was made, and to which address.
    current: Option<(Instant, SocketAddr)>,
    /// The address of the attempt in progress.
    obtained: Option<SocketAddr>,
    failures: BTreeMap<String, u64>,
    /// Requests answered `200`.
    ok: u64,
    closed: bool,
}

impl Probe {
    /// Starts looking for the first success after now (not from `except`).
    fn arm(&mut self, except: Option<String>) -> Instant {
        let now = Instant::now();
        self.after = Some(now);
        self.except = except;
        self.first = None;
        self.connected = None;
        self.first_failure = None;
        now
    }

    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

/// A client of `layer`'s address source with a probe fed by its events and its request loop,
/// which pauses `pause` after each success and stops when the client closes.
struct Probed {
    svc: Client,
    probe: Arc<Mutex<Probe>>,
    requests: JoinHandle<()>,
}

impl Probed {
    /// Closes the client and waits (bounded) for its request loop to end; then its probe
    /// counts every request it made.
    async fn close(self) -> Arc<Mutex<Probe>> {
        self.svc.handle().close().await;
        if tokio::time::timeout(REQUEST_BOUND, self.requests)
            .await
            .is_err()
        {
            eprintln!("a request loop did not end within {REQUEST_BOUND:?} of close");
        }
        self.probe
    }
}

fn client<P: RetryPolicy>(
    layer: PersistentConnectionLayer<SocketAddr>,
    policy: Option<P>,
    pause: Duration,
) -> Probed {
    let probe = Arc::new(Mutex::new(Probe::default()));
    let events = probe.clone();
    let layer = match policy {
        Some(policy) => layer.retry_policy(policy),
        None => layer,
    };
    let svc = layer
        .on_event(move |event: &Event<SocketAddr, _>| {
            let mut probe = events.lock().unwrap();
            match event {
                Event::ObtainedAddress(addr) => probe.obtained = Some(*addr),
                Event::Connected(_) => {
                    let now = Instant::now();
                    probe.current = probe.obtained.map(|addr| (now, addr));
                    if probe.after.is_some() && probe.connected.is_none() {
                        probe.connected = Some(now);
                    }
                }
                Event::Disconnected => probe.current = None,
                _ => {}
            }
        })
        .http2(Http2Connector::<Body>::new());
    let (mut looping, probe_of_loop) = (svc.clone(), probe.clone());
    let requests = tokio::spawn(async move {
        loop {
            let outcome = get(&mut looping).await;
            let now = Instant::now();
            {
                let mut probe = probe_of_loop.lock().unwrap();
                match outcome {
                    Outcome::Ok(server) => {
                        probe.ok += 1;
                        let wanted = probe.after.is_some_and(|after| now >= after)
                            && probe.first.is_none()
                            && probe.except.as_ref() != Some(&server);
                        if wanted {
                            probe.first = Some(now);
                        }
                    }
                    Outcome::Closed => {
                        probe.closed = true;
                        return;
                    }
                    Outcome::Failed(error) => {
                        *probe.failures.entry(error).or_default() += 1;
                        if probe.after.is_some() && probe.first_failure.is_none() {
                            probe.first_failure = Some(now);
                        }
                    }
                }
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    });
    Probed {
        svc,
        probe,
        requests,
    }
}

/// Waits (bounded by `bound`, polling every millisecond) until `done` holds; whether it did.
async fn wait_until(bound: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    done()
}

/// `BENCH_VERBOSE=1`: print every kill.
fn verbose() -> bool {
    std::env::var("BENCH_VERBOSE").is_ok_and(|v| v == "1")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default()
}

// === failover ===

/// Kills the server in use `kills` times; prints the table; returns the problems found.
async fn failover(servers: &Handle, kills: usize) -> Vec<String> {
    let a = on_servers(servers, H2Server::start("a")).await;
    let b = on_servers(servers, H2Server::start("b")).await;
    let by_addr: BTreeMap<SocketAddr, (&str, H2Server)> =
        [(a.addr(), ("a", a.clone())), (b.addr(), ("b", b.clone()))].into();
    let layer =
        PersistentConnectionLayer::round_robin([a.addr(), b.addr()]).server_name("replicas");
    let probed = client(
        layer,
        Some(Constant::new(Duration::from_millis(500))),
        Duration::ZERO,
    );
    let (handle, probe) = (probed.svc.handle(), probed.probe.clone());
    let mut problems = Vec::new();
    let mut to_success = Vec::new();
    let mut to_connected = Vec::new();
    let mut failed_per_kill = Vec::new();
    for kill in 0..kills {
        // The connection in use, once it is 0.8 s old.
        let ready = wait_until(Duration::from_secs(10), || {
            let probe = probe.lock().unwrap();
            probe
                .current
                .is_some_and(|(at, _)| at.elapsed() >= Duration::from_millis(800))
        })
        .await;
        if !ready {
            problems.push(format!(
                "failover kill {kill}: no connection 0.8 s old within 10 s"
            ));
            break;
        }
        let in_use = probe.lock().unwrap().current.unwrap().1;
        let (name, server) = &by_addr[&in_use];
        let (failed_before, errors_before) = {
            let probe = probe.lock().unwrap();
            (probe.failed(), probe.failures.clone())
        };
        let replayed_before = handle.stats().replayed_requests;
        let killed_at = probe.lock().unwrap().arm(Some((*name).to_owned()));
        let victim = server.clone();
        on_servers(servers, async move { victim.kill().await }).await;
        let kill_took = killed_at.elapsed();
        let recovered = wait_until(Duration::from_secs(10), || {
            let probe = probe.lock().unwrap();
            probe.first.is_some() && probe.connected.is_some()
        })
        .await;
        let (first, connected, failed) = {
            let probe = probe.lock().unwrap();
            (probe.first, probe.connected, probe.failed() - failed_before)
        };
        match (first, connected) {
            (Some(first), Some(connected)) if recovered => {
                to_success.push((first - killed_at).as_secs_f64() * 1e3);
                to_connected.push((connected - killed_at).as_secs_f64() * 1e3);
            }
            _ => problems.push(format!("failover kill {kill}: no success within 10 s")),
        }
        if verbose() {
            let ms = |at: Option<Instant>| {
                at.map_or("-".to_owned(), |at| {
                    format!("{:.2} ms", (at - killed_at).as_secs_f64() * 1e3)
                })
            };
            let (failure, errors) = {
                let probe = probe.lock().unwrap();
                let errors: Vec<String> = probe
                    .failures
                    .iter()
                    .filter_map(|(error, &count)| {
                        let new = count - errors_before.get(error).copied().unwrap_or(0);
                        (new > 0).then(|| format!("{new} x {error}"))
                    })
                    .collect();
                (probe.first_failure, errors)
            };
            println!(
                "kill {kill} of {name}: kill done {:.2} ms, first failure {}, connected {}, \
                 first success {}, failed {failed} {errors:?}, sent again {}",
                kill_took.as_secs_f64() * 1e3,
                ms(failure),
                ms(connected),
                ms(first),
                handle.stats().replayed_requests - replayed_before
            );
        }
        failed_per_kill.push(failed);
        let victim = server.clone();
        on_servers(servers, async move { victim.restart().await }).await;
    }
    let stats = handle.stats();
    let probe = probed.close().await;
    let (failures, ok) = {
        let probe = probe.lock().unwrap();
        (probe.failures.clone(), probe.ok)
    };
    let received = (a.counts().requests + b.counts().requests) as u64;
    for server in [a, b] {
        on_servers(servers, async move { server.kill().await }).await;
    }

    let success = sorted(to_success);
    let connected = sorted(to_connected);
    let failed: u64 = failed_per_kill.iter().sum();
    println!();
    println!(
        "Failover: kill of the server in use -> first successful request (other replica in the \
         round-robin list, retry delay 500 ms ±30 %, connection older than the delay); {} \
         kills; {}",
        success.len(),
        date()
    );
    println!();
    println!("| from the kill to | median | p90 | max | kills |");
    println!("|---|---|---|---|---|");
    for (what, values) in [
        ("`Connected` (new connection)", &connected),
        ("first successful request", &success),
    ] {
        println!(
            "| {what} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            percentile(values, 0.5),
            percentile(values, 0.9),
            values.last().copied().unwrap_or(f64::NAN),
            values.len()
        );
    }
    println!();
    println!(
        "Requests: {} answered, {failed} failed over {kills} kills (per kill: {:?}), of which \
         {} had reached the servers' handler; {} sent again on the next connection by the \
         connector; attempts {}, failed attempts {}.",
        ok,
        failed_per_kill,
        received.saturating_sub(ok),
        stats.replayed_requests,
        stats.attempts,
        stats.failed_attempts
    );
    for (error, count) in &failures {
        println!("- {count} x {error}");
    }
    problems.extend(accounting("failover", received, ok, failed));
    if success.len() != kills {
        problems.push(format!(
            "failover: {} of {kills} kills recovered",
            success.len()
        ));
    }
    if let Some(kill) = failed_per_kill.iter().position(|&failed| failed > 1) {
        problems.push(format!(
            "failover kill {kill}: {} requests failed, more than the one in flight: {failures:?}",
            failed_per_kill[kill]
        ));
    }
    if stats.failed_attempts > 0 {
        problems.push(format!(
            "failover: {} failed attempts (the next attempt should go to the live replica)",
            stats.failed_attempts
        ));
    }
    problems
}

/// Checks the requests the servers' handler received against the client's: none was
/// processed twice (a resend of a request the server had received), and prints how many of the
/// failed requests had reached the handler (may have been processed: never resent, S16).
fn accounting(what: &str, received: u64, ok: u64, failed: u64) -> Vec<String> {
    let reached = received.saturating_sub(ok);
    println!(
        "{what}: the servers' handler received {received} requests; the clients had {ok} \
         answered and {failed} failed, so {reached} of the failed ones had reached the handler \
         (and {} had not).",
        failed.saturating_sub(reached)
    );
    if received > ok + failed {
        vec![format!(
            "{what}: the servers received {received} requests, more than the {} the clients \
             made: a request was processed twice",
            ok + failed
        )]
    } else {
        Vec::new()
    }
}

// === server back ===

/// A retry policy of the crate, by name, with its schedule.
#[derive(Clone, Copy, Debug)]
enum Policy {
    Default,
    Constant1s,
    Exponential100ms,
    Grpc,
    GrpcGiveUpAfter4,
}

const POLICIES: [Policy; 5] = [
    Policy::Default,
    Policy::Constant1s,
    Policy::Exponential100ms,
    Policy::Grpc,
    Policy::GrpcGiveUpAfter4,
];

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Self::Default => "default (`Constant`, 10 s)",
            Self::Constant1s => "`Constant::new(1 s)`",
            Self::Exponential100ms => "`Exponential::new(100 ms, 2.0, 5 s)`",
            Self::Grpc => "`Exponential::grpc()` (1 s, x1.6, cap 120 s)",
            Self::GrpcGiveUpAfter4 => "`Exponential::grpc().give_up_after(4)`",
        }
    }

    /// The delay armed before the attempt that follows `failures` failures in a row (before
    /// jitter); `None` once the policy gives up.
    fn delay(self, failures: u32) -> Option<Duration> {
        match self {
            Self::Default => Some(Duration::from_secs(10)),
            Self::Constant1s => Some(Duration::from_secs(1)),
            Self::Exponential100ms => Some(exponential_100ms().delay(failures)),
            Self::Grpc => Some(Exponential::grpc().delay(failures)),
            Self::GrpcGiveUpAfter4 => (failures < 4).then(|| Exponential::grpc().delay(failures)),
        }
    }

    /// A client of `addr` with this policy.
    fn client(self, addr: SocketAddr, pause: Duration) -> Probed {
        let layer = PersistentConnectionLayer::fixed_address(addr).server_name("server");
        match self {
            Self::Default => client::<Constant>(layer, None, pause),
            Self::Constant1s => client(layer, Some(Constant::new(Duration::from_secs(1))), pause),
            Self::Exponential100ms => client(layer, Some(exponential_100ms()), pause),
            Self::Grpc => client(layer, Some(Exponential::grpc()), pause),
            Self::GrpcGiveUpAfter4 => {
                client(layer, Some(Exponential::grpc().give_up_after(4)), pause)
            }
        }
    }

    /// How old a connection must be for its death to be followed by an attempt at once: older
    /// than the first delay with the most jitter, and than the flap guard (1 s).
    fn warm_up(self) -> Duration {
        let first = self.delay(0).unwrap_or_default().mul_f64(1.0 + JITTER);
        first.max(Duration::from_secs(1)) + Duration::from_millis(300)
    }

    /// The lag from the server's return to the first attempt that finds it, by the schedule:
    /// the first attempt at the death (t = 0), each next one when the delay armed before the
    /// previous one expires (the policy's delay for the failures so far, jittered uniformly
    /// within ±30 %); `None` if the policy gives up first.
    fn scheduled_lag(self, down: f64, rng: &mut StdRng) -> Option<f64> {
        let mut at = 0.0;
        let mut failures = 0;
        loop {
            let delay = self.delay(failures)?.as_secs_f64();
            if at >= down {
                return Some(at - down);
            }
            failures += 1;
            at += delay * rng.random_range(1.0 - JITTER..=1.0 + JITTER);
        }
    }
}

fn exponential_100ms() -> Exponential {
    Exponential::new(Duration::from_millis(100), 2.0, Duration::from_secs(5))
}

/// What the rounds with one down time measured of one policy.
#[derive(Debug, Default)]
struct BackFigures {
    lags: Vec<f64>,
    gave_up: usize,
    not_recovered: usize,
    failed: u64,
    failures: BTreeMap<String, u64>,
}

/// The server-back rounds: `downs` in turn, `per_policy` clients per policy, each connection
/// warmed up first if `warm`; prints the tables, returns the problems found.
async fn server_back(
    servers: &Handle,
    downs: &[Duration],
    per_policy: usize,
    warm: bool,
) -> Vec<String> {
    let server = on_servers(servers, H2Server::start("c")).await;
    let mut problems = Vec::new();
    let mut figures: BTreeMap<(u128, usize), BackFigures> = BTreeMap::new();
    let (mut ok, mut failed) = (0, 0);
    let start = Instant::now();
    for (round, &down) in downs.iter().enumerate() {
        // Fresh clients each round: a `give_up_after` client stays closed.
        let mut clients = Vec::new();
        for (index, policy) in POLICIES.iter().enumerate() {
            for _ in 0..per_policy {
                let probed = policy.client(server.addr(), Duration::from_millis(2));
                clients.push((index, *policy, probed));
            }
        }
        let warmed = wait_until(Duration::from_secs(30), || {
            clients.iter().all(|(_, policy, probed)| {
                let needed = if warm {
                    policy.warm_up()
                } else {
                    Duration::from_millis(1200)
                };
                probed
                    .probe
                    .lock()
                    .unwrap()
                    .current
                    .is_some_and(|(at, _)| at.elapsed() >= needed)
            })
        })
        .await;
        if !warmed {
            problems.push(format!("server back round {round}: clients not connected"));
            break;
        }
        let killed = server.clone();
        on_servers(servers, async move { killed.kill().await }).await;
        tokio::time::sleep(down).await;
        let back_at = Instant::now();
        for (_, _, probed) in &clients {
            probed.probe.lock().unwrap().arm(None);
        }
        let back = server.clone();
        on_servers(servers, async move { back.restart().await }).await;
        // Every client recovers or gives up: within the longest schedule (the default's 13 s
        // after a failed attempt at the most), with a margin.
        let settled = wait_until(Duration::from_secs(40), || {
            clients.iter().all(|(_, _, probed)| {
                let probe = probed.probe.lock().unwrap();
                probe.first.is_some() || probe.closed
            })
        })
        .await;
        if !settled {
            problems.push(format!(
                "server back round {round} (down {down:?}): not every client recovered within 40 s"
            ));
        }
        for (index, policy, probed) in clients {
            // Whether it recovered or gave up, before it is closed here.
            let (first, gave_up) = {
                let probe = probed.probe.lock().unwrap();
                (probe.first, probe.closed)
            };
            let probe = probed.close().await;
            let probe = probe.lock().unwrap();
            let entry = figures.entry((down.as_millis(), index)).or_default();
            entry.failed += probe.failed();
            ok += probe.ok;
            failed += probe.failed();
            for (error, count) in &probe.failures {
                *entry.failures.entry(error.clone()).or_default() += count;
            }
            match (first, gave_up) {
                (Some(first), _) => entry.lags.push((first - back_at).as_secs_f64()),
                (None, true) => entry.gave_up += 1,
                (None, false) => entry.not_recovered += 1,
            }
            if probe.failed() > 1 {
                problems.push(format!(
                    "server back round {round}, {}: {} requests failed: {:?}",
                    policy.name(),
                    probe.failed(),
                    probe.failures
                ));
            }
        }
    }
    let elapsed = start.elapsed();
    let received = server.counts().requests as u64;
    on_servers(servers, async move { server.kill().await }).await;
    problems.extend(accounting("server back", received, ok, failed));

    let mut rng = StdRng::seed_from_u64(16);
    let mut distinct: Vec<Duration> = downs.to_vec();
    distinct.sort();
    distinct.dedup();
    println!();
    println!(
        "Server back: time from the server listening again to each client's first successful \
         request, after D down; {} clients per policy and round; {:.0} s; {}",
        per_policy,
        elapsed.as_secs_f64(),
        date()
    );
    for down in distinct {
        let rounds = downs.iter().filter(|&&d| d == down).count();
        println!();
        println!(
            "D = {:.1} s, {rounds} rounds: measured lag, and the lag expected from the policy's \
             schedule (100,000 draws of the jitter)",
            down.as_secs_f64()
        );
        println!();
        println!(
            "| policy | measured median | p90 | max | samples | expected median | expected p90 \
             | expected max | gave up (measured / expected) | failed requests |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for (index, policy) in POLICIES.iter().enumerate() {
            let Some(measured) = figures.get(&(down.as_millis(), index)) else {
                continue;
            };
            let lags = sorted(measured.lags.clone());
            let samples = lags.len() + measured.gave_up + measured.not_recovered;
            let draws = 100_000;
            let mut expected = Vec::with_capacity(draws);
            let mut expected_gave_up = 0;
            for _ in 0..draws {
                match policy.scheduled_lag(down.as_secs_f64(), &mut rng) {
                    Some(lag) => expected.push(lag),
                    None => expected_gave_up += 1,
                }
            }
            let expected = sorted(expected);
            let cell = |values: &[f64], p: f64| {
                if values.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{:.2} s", percentile(values, p))
                }
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {:.0} % | {} |",
                policy.name(),
                cell(&lags, 0.5),
                cell(&lags, 0.9),
                cell(&lags, 1.0),
                samples,
                cell(&expected, 0.5),
                cell(&expected, 0.9),
                cell(&expected, 1.0),
                measured.gave_up,
                100.0 * f64::from(expected_gave_up) / draws as f64,
                measured.failed,
            );
            for (error, count) in &measured.failures {
                println!("- {}: {count} x {error}", policy.name());
            }
            if measured.not_recovered > 0 {
                problems.push(format!(
                    "server back, D = {down:?}, {}: {} clients neither recovered nor gave up",
                    policy.name(),
                    measured.not_recovered
                ));
            }
        }
    }
    problems
}

fn main() {
    let test = std::env::args().any(|arg| arg == "--test");
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("servers")
        .enable_all()
        .build()
        .expect("the servers' runtime");
    let clients: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the clients' runtime");
    let handle = servers.handle().clone();
    let problems = clients.block_on(async move {
        let mut problems = if test {
            failover(&handle, 3).await
        } else {
            failover(&handle, 30).await
        };
        let s = Duration::from_secs;
        problems.extend(if test {
            server_back(&handle, &[Duration::from_millis(500)], 1, false).await
        } else {
            server_back(&handle, &[s(2), s(10), s(2), s(10), s(2), s(10)], 4, true).await
        });
        problems
    });
    if !problems.is_empty() {
        for problem in problems {
            eprintln!("recovery: {problem}");
        }
        std::process::exit(1);
    }
    if test {
        println!("recovery: every case ran and recovered");
    }
}
