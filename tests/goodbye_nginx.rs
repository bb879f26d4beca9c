//! A server's goodbye never costs a request (DESIGN S14-S16), against a real nginx on
//! 127.0.0.1 (see `support/nginx.rs`; skipped with one line when nginx is not installed,
//! unless `REQUIRE_REAL_SERVERS=1`):
//!
//! - HTTP/2 with `keepalive_requests 200` (nginx sends `GOAWAY` after every 200th request):
//!   32 concurrent loops for 10 s lose no request, the layer never waits a retry delay, and
//!   the requests are printed as a ratio of the same load with `keepalive_requests 1000000`
//!   (asserted with a wide margin; the tight figure belongs to a benchmark);
//! - HTTP/2 with 5 configuration reloads during the run (each old worker says goodbye):
//!   no request lost;
//! - HTTP/1 with `keepalive_timeout 1s; keepalive_requests 50;` and 4 clients doing bursts
//!   and pauses around the idle timeout: no request lost, never a retry delay.
//!
//! Each run prints its figures. The `#[ignore]`d measurement `restart_in_place_gap` (run with
//! `cargo test --all-features --test goodbye_nginx -- --ignored --nocapture`) prints how long a
//! client is without a connection when nginx is restarted in place, for `Constant` (the
//! default) and `Exponential::grpc()`.
//!
//! Real sockets and real time: `Instant`s only bound loops and measure figures; every wait is
//! bounded.

#[path = "support/chain.rs"]
mod chain;
#[path = "support/nginx.rs"]
mod nginx;
use chain::{answered_ok, chain};

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use nginx::{Config, Nginx};
use persistent_connection::{
    BoxError, Event, Handle, PersistentConnectionLayer, State,
    http::{Http1Connector, Http2Connector},
    observe::Stats,
    retry::{Constant, Exponential, RetryPolicy},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use tokio::{task::JoinSet, time::Instant};
use tower::{Service, ServiceExt};

type Body = Empty<Bytes>;

/// How long each load run lasts.
const RUN: Duration = Duration::from_secs(10);
/// Concurrent request loops of the HTTP/2 runs.
const LOOPS: usize = 32;
/// Slices per configuration when two are compared (see `SlicedRun`).
const SLICES: u32 = 10;
/// A bound on one request (including its wait for a connection): a longer one is a failure.
const REQUEST_BOUND: Duration = Duration::from_secs(5);
/// A bound on the first connection.
const CONNECT_BOUND: Duration = Duration::from_secs(5);

/// One run at a time in this binary: the runs measure throughput, and the machine may have
/// two cores only (each test takes it first; a tokio mutex works across the tests' runtimes).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// === one request ===

/// `GET /` through `svc` (waiting for it to be ready), the whole body read, bounded by
/// [`REQUEST_BOUND`]; `Ok` only for `200 ok`.
async fn get<S>(svc: &mut S) -> Result<(), String>
where
    S: Service<Request<Body>, Response = Response<Incoming>, Error = BoxError>,
{
    let request = Request::get("/").body(Empty::new()).unwrap();
    answered_ok(REQUEST_BOUND, async {
        svc.ready().await?.call(request).await
    })
    .await
}

// === what a run measures ===

/// Requests and failures of one run, the failures by message.
#[derive(Debug, Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    fn record(&self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                *self.errors.lock().unwrap().entry(error).or_default() += 1;
            }
        }
    }
}

/// Watches one layer: its events (the longest time from a `Disconnected` to the next
/// `Connected`) and its states (how many times it was `Waiting` for a retry delay).
#[derive(Clone, Debug, Default)]
struct Watch {
    gaps: Arc<Mutex<Gaps>>,
    waiting: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Gaps {
    disconnected_at: Option<Instant>,
    longest: Duration,
    count: u64,
}

impl Watch {
    /// The `on_event` hook feeding this watch.
    fn hook<A, S>(&self) -> impl Fn(&Event<A, S>) + Send + Sync + 'static {
        let gaps = self.gaps.clone();
        move |event: &Event<A, S>| {
            let mut gaps = gaps.lock().unwrap();
            match event {
                Event::Disconnected => gaps.disconnected_at = Some(Instant::now()),
                Event::Connected(_) => {
                    if let Some(at) = gaps.disconnected_at.take() {
                        gaps.longest = gaps.longest.max(at.elapsed());
                        gaps.count += 1;
                    }
                }
                _ => {}
            }
        }
    }

    /// Counts every `State::Waiting` of `handle`, in a task that ends with the layer.
    fn states<S: Clone + Send + 'static>(&self, handle: &Handle<S>) {
        let mut states = handle.state_changes();
        let waiting = self.waiting.clone();
        tokio::spawn(async move {
            while let Some(state) = states.next().await {
                if matches!(state, State::Waiting { .. }) {
                    waiting.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }

    /// The longest gap so far, counting one still open (a disconnection not yet followed by
    /// a connection).
    fn longest_gap(&self) -> Duration {
        let gaps = self.gaps.lock().unwrap();
        let open = gaps
            .disconnected_at
            .map(|at| at.elapsed())
            .unwrap_or_default();
        gaps.longest.max(open)
    }
}

/// The figures of one run, printed and then asserted on.
#[derive(Debug)]
struct Figures {
    label: String,
    requests: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
    /// The sums over the run's layers.
    disconnections: u64,
    graceful_closes: u64,
    replayed: u64,
    refused: u64,
    failed_attempts: u64,
    connections: u64,
    /// `State::Waiting` seen, over all layers.
    waiting: u64,
    longest_gap: Duration,
}

impl Figures {
    fn new(label: &str, tally: &Tally, elapsed: Duration, layers: &[(Stats, &Watch)]) -> Self {
        let sum = |f: fn(&Stats) -> u64| layers.iter().map(|(stats, _)| f(stats)).sum();
        Self {
            label: label.to_owned(),
            requests: tally.ok.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed),
            failed: tally.failed.load(Ordering::Relaxed),
            errors: tally.errors.lock().unwrap().clone(),
            elapsed,
            disconnections: sum(|s| s.disconnections),
            graceful_closes: sum(|s| s.graceful_closes),
            replayed: sum(|s| s.replayed_requests),
            refused: sum(|s| s.refused_requests),
            failed_attempts: sum(|s| s.failed_attempts),
            connections: sum(|s| s.connections),
            waiting: layers
                .iter()
                .map(|(_, w)| w.waiting.load(Ordering::Relaxed))
                .sum(),
            longest_gap: layers
                .iter()
                .map(|(_, w)| w.longest_gap())
                .max()
                .unwrap_or_default(),
        }
    }

    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        println!(
            "[{}] requests {} failed {} in {:.1} s ({:.0}/s); connections {} disconnections {} \
             graceful closes {} replayed {} refused {} failed attempts {} waiting states {} \
             longest disconnected-to-connected {:?}",
            self.label,
            self.requests,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.connections,
            self.disconnections,
            self.graceful_closes,
            self.replayed,
            self.refused,
            self.failed_attempts,
            self.waiting,
            self.longest_gap,
        );
        for (error, count) in &self.errors {
            println!("[{}]   {count} x {error}", self.label);
        }
    }

    /// No request failed, no attempt failed, no retry delay waited.
    fn assert_no_cost(&self) {
        assert_eq!(
            self.failed, 0,
            "[{}] requests failed: {:?}",
            self.label, self.errors
        );
        assert_eq!(
            self.failed_attempts, 0,
            "[{}] connection attempts failed",
            self.label
        );
        assert_eq!(
            self.waiting, 0,
            "[{}] the layer waited a retry delay (State::Waiting) {} times",
            self.label, self.waiting
        );
    }
}

/// Waits (bounded) for the first connection of a layer.
async fn first_connection<S: Clone + Send + 'static>(handle: &Handle<S>) {
    tokio::time::timeout(CONNECT_BOUND, handle.connected())
        .await
        .expect("no connection to nginx within the bound")
        .expect("closed before connecting");
}

// === HTTP/2 ===

/// Builds the HTTP/2 client of the runs: `fixed_address`, server name `nginx`, watched.
fn h2_client(
    nginx: &Nginx,
    watch: &Watch,
) -> persistent_connection::PersistentConnection<persistent_connection::http::Http2Connection<Body>>
{
    let svc = PersistentConnectionLayer::fixed_address(nginx.addr())
        .server_name("nginx")
        .on_event(watch.hook())
        .http2(Http2Connector::<Body>::new());
    watch.states(&svc.handle());
    svc
}

/// [`LOOPS`] tasks, each sending `GET /` through its clone of `svc` until `deadline`.
fn spawn_loops<S>(svc: &S, tally: &Arc<Tally>, deadline: Instant) -> JoinSet<()>
where
    S: Service<Request<Body>, Response = Response<Incoming>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut loops = JoinSet::new();
    for _ in 0..LOOPS {
        let (mut svc, tally) = (svc.clone(), tally.clone());
        loops.spawn(async move {
            while Instant::now() < deadline {
                tally.record(get(&mut svc).await);
            }
        });
    }
    loops
}

/// Waits for every loop; a panic in one fails the test.
async fn join(mut loops: JoinSet<()>) {
    while let Some(result) = loops.join_next().await {
        result.expect("a request loop panicked");
    }
}

/// [`LOOPS`] loops, each a clone of one HTTP/2 service, send `GET /` for [`RUN`] against an
/// nginx with `config`; `during` runs alongside (given nginx and the run's start). Returns
/// nginx (kept alive until the test's asserts are done, for its log) and the figures.
async fn h2_run(
    label: &str,
    config: Config,
    during: impl AsyncFnOnce(&Nginx, Instant),
) -> Option<(Nginx, Figures)> {
    let nginx = Nginx::start(config).await?;
    let watch = Watch::default();
    let svc = h2_client(&nginx, &watch);
    let handle = svc.handle();
    first_connection(&handle).await;

    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let deadline = start + RUN;
    let loops = spawn_loops(&svc, &tally, deadline);
    during(&nginx, start).await;
    join(loops).await;
    let elapsed = start.elapsed();
    // The figures before `close`, whose own disconnection would count as an open gap.
    let figures = Figures::new(label, &tally, elapsed, &[(handle.stats(), &watch)]);
    handle.close().await;
    figures.print();
    Some((nginx, figures))
}

/// One HTTP/2 client of a run that is measured in slices: an nginx, the layer, its watch.
struct SlicedRun {
    label: &'static str,
    nginx: Nginx,
    watch: Watch,
    svc: persistent_connection::PersistentConnection<
        persistent_connection::http::Http2Connection<Body>,
    >,
    tally: Arc<Tally>,
    elapsed: Duration,
}

impl SlicedRun {
    async fn start(label: &'static str, config: Config) -> Option<Self> {
        let nginx = Nginx::start(config).await?;
        let watch = Watch::default();
        let svc = h2_client(&nginx, &watch);
        first_connection(&svc.handle()).await;
        Some(Self {
            label,
            nginx,
            watch,
            svc,
            tally: Arc::new(Tally::default()),
            elapsed: Duration::ZERO,
        })
    }

    /// [`LOOPS`] loops send `GET /` for `length`.
    async fn slice(&mut self, length: Duration) {
        let start = Instant::now();
        join(spawn_loops(&self.svc, &self.tally, start + length)).await;
        self.elapsed += start.elapsed();
    }

    async fn finish(self) -> (Nginx, Figures) {
        let handle = self.svc.handle();
        let figures = Figures::new(
            self.label,
            &self.tally,
            self.elapsed,
            &[(handle.stats(), &self.watch)],
        );
        handle.close().await;
        figures.print();
        (self.nginx, figures)
    }
}

/// nginx's `GOAWAY` after every 200th request on a connection (`keepalive_requests 200`)
/// costs no request: 0 failed, no failed attempt, never `State::Waiting`. The throughput is
/// compared with the same load where nginx never says goodbye (`keepalive_requests 1000000`),
/// measured in alternating 1 s slices (10 each) so that the machine's load drifting during
/// the test weighs on both alike; the ratio is printed (0.96-1.00 over runs on a 2-core
/// machine) and asserted at 0.5x, which a layer that waits a retry delay after a goodbye
/// fails by far (it measured 0.010x), while a loaded machine does not make it flaky.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_goaway_after_keepalive_requests_costs_no_request_and_little_throughput() {
    let _serial = SERIAL.lock().await;
    let Some(mut base) = SlicedRun::start(
        "h2 keepalive_requests 1000000",
        Config::h2c().directive("keepalive_requests 1000000;"),
    )
    .await
    else {
        return;
    };
    let Some(mut rotating) = SlicedRun::start(
        "h2 keepalive_requests 200",
        Config::h2c().directive("keepalive_requests 200;"),
    )
    .await
    else {
        return;
    };
    for _ in 0..SLICES {
        base.slice(RUN / SLICES).await;
        rotating.slice(RUN / SLICES).await;
    }
    let (_nginx_base, base) = base.finish().await;
    let (_nginx, goaway) = rotating.finish().await;
    let ratio = goaway.requests as f64 / base.requests as f64;
    println!(
        "requests with keepalive_requests 200 / with 1000000: {} / {} = {ratio:.3}",
        goaway.requests, base.requests
    );
    base.assert_no_cost();
    goaway.assert_no_cost();
    assert!(
        goaway.graceful_closes > 0 || goaway.disconnections > 0,
        "nginx never closed a connection: keepalive_requests had no effect"
    );
    assert!(
        ratio >= 0.5,
        "with keepalive_requests 200, {ratio:.3}x the requests of keepalive_requests 1000000 \
         (want at least 0.5x here; the target of 0.9x is a benchmark's)"
    );
}

/// The same goodbyes (`keepalive_requests 200`) while two processes keep the machine's cores
/// busy: preemption at any instruction widens every race between a `GOAWAY`, the clones that
/// see it and the replacement. No request may fail or wait past [`REQUEST_BOUND`], and no
/// goodbye may be taken for a failure. Two races were found under such load (in most
/// one-minute runs of a client like this one, not in every run: this test guards, the unit
/// tests of `sniff::until` and `resend::unless_stranded` pin them down): a clone's
/// `poll_ready` seeing the `GOAWAY` before the close signal's waiter was woken (the layer took
/// it for a failure and waited the retry delay), and a request left in hyper's queue as the
/// connection task ended.
///
/// Opt-in (it loads the machine): `CONTENTION_SECS=60 cargo test --all-features --test
/// goodbye_nginx -- --ignored --nocapture contention` (default 20 s; `.ci/run` runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "loads every core; run with --ignored (CONTENTION_SECS sets the length)"]
async fn h2_goaway_under_cpu_contention_leaves_no_request_waiting() {
    let _serial = SERIAL.lock().await;
    let secs = std::env::var("CONTENTION_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(20u64)
        .clamp(1, 3600);
    let run = Duration::from_secs(secs);
    let label = "h2 keepalive_requests 200, two busy cores";
    let Some(nginx) = Nginx::start(Config::h2c().directive("keepalive_requests 200;")).await else {
        return;
    };
    // Two busy processes (scheduled like nginx's worker, unlike threads of this process),
    // killed when the run ends or the test fails.
    let busy = [Busy::start(), Busy::start()];
    // No hook and no state watcher: the driver does only its own work, as in most
    // deployments (the races showed less with them).
    let svc = PersistentConnectionLayer::fixed_address(nginx.addr())
        .server_name("nginx")
        .http2(Http2Connector::<Body>::new());
    let handle = svc.handle();
    first_connection(&handle).await;
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let deadline = start + run;
    join(spawn_loops(&svc, &tally, deadline)).await;
    let stats = handle.stats();
    let figures = Figures::new(
        label,
        &tally,
        start.elapsed(),
        &[(stats.clone(), &Watch::default())],
    );
    handle.close().await;
    figures.print();
    drop(busy);
    figures.assert_no_cost();
    assert!(
        stats.graceful_closes > 0,
        "nginx never said goodbye: keepalive_requests had no effect"
    );
    assert_eq!(
        stats.disconnections, stats.graceful_closes,
        "[{label}] a goodbye was taken for a failure: {stats:?}"
    );
    assert_eq!(stats.consecutive_failures, 0, "[{label}] {stats:?}");
}

/// A process that keeps one core busy until it is dropped.
struct Busy(std::process::Child);

impl Busy {
    fn start() -> Self {
        let child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh runs");
        Self(child)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Five configuration reloads during the run (each replaces nginx's worker; the old one says
/// goodbye to its connections) cost no request. The only goodbyes: `keepalive_requests` is
/// set out of reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_reloads_cost_no_request() {
    let _serial = SERIAL.lock().await;
    const RELOADS: u32 = 5;
    let label = "h2 5 reloads";
    let during = async |nginx: &Nginx, start: Instant| {
        for i in 1..=RELOADS {
            tokio::time::sleep_until(start + RUN * i / (RELOADS + 1)).await;
            nginx.reload().await;
            println!(
                "[{label}] reload {i} at {:.2} s",
                start.elapsed().as_secs_f64()
            );
        }
    };
    // nginx's default `keepalive_requests 1000` would add goodbyes of its own.
    let config = Config::h2c().directive("keepalive_requests 1000000;");
    let Some((_nginx, figures)) = h2_run(label, config, during).await else {
        return;
    };
    assert_eq!(
        figures.failed, 0,
        "[{label}] requests failed: {:?}",
        figures.errors
    );
}

// === HTTP/1 ===

/// Clients of the HTTP/1 run, each its own layer (one connection).
const CLIENTS: usize = 4;

/// nginx closing HTTP/1 connections after 50 requests (`Connection: close`) and after 1 s
/// idle, with 4 clients doing bursts of 30-80 requests and pauses of 0.5-1.5 s around that
/// idle timeout (seeded): no request fails, no attempt fails, no layer ever waits a retry
/// delay (so no connection-less gap is longer than one handshake). Prints the longest time
/// from a `Disconnected` to the next `Connected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_idle_and_request_limit_closes_cost_no_request() {
    let _serial = SERIAL.lock().await;
    let label = "http1 keepalive_timeout 1s keepalive_requests 50";
    let config = Config::http1()
        .directive("keepalive_timeout 1s;")
        .directive("keepalive_requests 50;");
    let Some(nginx) = Nginx::start(config).await else {
        return;
    };
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let watch = Watch::default();
        let svc = PersistentConnectionLayer::fixed_address(nginx.addr())
            .server_name("nginx")
            .on_event(watch.hook())
            .http1(Http1Connector::<Body>::new());
        watch.states(&svc.handle());
        clients.push((svc, watch));
    }
    for (svc, _) in &clients {
        first_connection(&svc.handle()).await;
    }

    let start = Instant::now();
    let deadline = start + RUN;
    let bursts = Arc::new(AtomicU64::new(0));
    let mut loops = JoinSet::new();
    for (seed, (svc, _)) in clients.iter().enumerate() {
        let (mut svc, tally, bursts) = (svc.clone(), tally.clone(), bursts.clone());
        let mut rng = StdRng::seed_from_u64(seed as u64 + 1);
        loops.spawn(async move {
            while Instant::now() < deadline {
                for _ in 0..rng.random_range(30..=80) {
                    if Instant::now() >= deadline {
                        break;
                    }
                    tally.record(get(&mut svc).await);
                }
                bursts.fetch_add(1, Ordering::Relaxed);
                let pause = Duration::from_millis(rng.random_range(500..=1500));
                tokio::time::sleep(pause).await;
            }
        });
    }
    join(loops).await;
    let elapsed = start.elapsed();
    let mut layers = Vec::new();
    for (svc, watch) in &clients {
        layers.push((svc.handle().stats(), watch));
    }
    let figures = Figures::new(label, &tally, elapsed, &layers);
    for (svc, _) in &clients {
        svc.handle().close().await;
    }
    figures.print();
    println!(
        "[{label}] {} bursts over {CLIENTS} clients",
        bursts.load(Ordering::Relaxed)
    );
    figures.assert_no_cost();
    assert!(
        figures.disconnections > 0,
        "nginx never closed a connection: keepalive_timeout / keepalive_requests had no effect"
    );
    drop(nginx);
}

// === measurement: a restart in place ===

/// How long one client (a request every 10 ms over HTTP/2) is without a successful request
/// when nginx is stopped and, about 1 s later, started again on the same port: from the last
/// success before the stop to the first success after the restart.
async fn restart_gap(label: &str, policy: impl RetryPolicy) -> Option<Duration> {
    let config = Config::h2c().directive("keepalive_requests 1000000;");
    let mut nginx = Nginx::start(config).await?;
    let svc = PersistentConnectionLayer::fixed_address(nginx.addr())
        .server_name("nginx")
        .retry_policy(policy)
        .http2(Http2Connector::<Body>::new());
    let handle = svc.handle();
    first_connection(&handle).await;

    let successes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let tally = Arc::new(Tally::default());
    let done = Arc::new(AtomicBool::new(false));
    let client = tokio::spawn({
        let (mut svc, successes, tally, done) =
            (svc.clone(), successes.clone(), tally.clone(), done.clone());
        async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !done.load(Ordering::Relaxed) {
                ticks.tick().await;
                // Waits as long as it takes to reconnect (bounded by the caller's wait).
                let request = Request::get("/").body(Empty::new()).unwrap();
                let result = match svc.ready().await {
                    Ok(ready) => match ready.call(request).await {
                        Ok(response) if response.status() == StatusCode::OK => response
                            .into_body()
                            .collect()
                            .await
                            .map(|_| ())
                            .map_err(|e| chain(&e)),
                        Ok(response) => Err(response.status().to_string()),
                        Err(error) => Err(chain(&*error)),
                    },
                    Err(error) => Err(chain(&*error)),
                };
                if result.is_ok() {
                    successes.lock().unwrap().push(Instant::now());
                }
                tally.record(result);
            }
        }
    });

    tokio::time::sleep(Duration::from_secs(2)).await;
    let stop_at = Instant::now();
    nginx.stop().await;
    let stopped = stop_at.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restart_at = Instant::now();
    nginx.start_again().await;
    let restarted = restart_at.elapsed();
    let bound = Instant::now() + Duration::from_secs(60);
    let first_after = loop {
        let after = successes
            .lock()
            .unwrap()
            .iter()
            .copied()
            .find(|at| *at > restart_at);
        if let Some(at) = after {
            break at;
        }
        assert!(
            Instant::now() < bound,
            "[{label}] no success within 60 s of the restart"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    done.store(true, Ordering::Relaxed);
    let last_before = successes
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|at| *at < restart_at)
        .max()
        .expect("no success before the stop");
    let gap = first_after - last_before;
    let _ = tokio::time::timeout(Duration::from_secs(5), client).await;
    let stats = handle.stats();
    handle.close().await;
    println!(
        "[{label}] without a successful request for {:.2} s (nginx stop took {:.2} s, then \
         down 1 s, start {:.2} s); failed requests {} {:?}; attempts {} failed attempts {}",
        gap.as_secs_f64(),
        stopped.as_secs_f64(),
        restarted.as_secs_f64(),
        tally.failed.load(Ordering::Relaxed),
        tally.errors.lock().unwrap(),
        stats.attempts,
        stats.failed_attempts,
    );
    Some(gap)
}

/// The median of three or more durations.
fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// The time without a connection across an nginx restart in place, `Constant` (the default
/// 10 s) vs `Exponential::grpc()`: 3 runs each, medians printed. A measurement for the
/// README, not a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (about a minute): run with --ignored --nocapture"]
async fn restart_in_place_gap() {
    let _serial = SERIAL.lock().await;
    let mut constant = Vec::new();
    let mut exponential = Vec::new();
    for run in 1..=3 {
        let Some(gap) = restart_gap(&format!("Constant run {run}"), Constant::default()).await
        else {
            return;
        };
        constant.push(gap);
        let Some(gap) = restart_gap(
            &format!("Exponential::grpc() run {run}"),
            Exponential::grpc(),
        )
        .await
        else {
            return;
        };
        exponential.push(gap);
    }
    println!(
        "restart in place, time without a successful request, median of 3: Constant (default) \
         {:.2} s {constant:.2?}, Exponential::grpc() {:.2} s {exponential:.2?}",
        median(constant.clone()).as_secs_f64(),
        median(exponential.clone()).as_secs_f64(),
    );
}
