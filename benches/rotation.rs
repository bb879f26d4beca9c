//! Graceful rotation under load (BENCHMARKS.md, "Graceful rotation under load"): a real nginx
//! that sends `GOAWAY` after every 200th request on a connection (`keepalive_requests 200`),
//! against the same nginx configuration that never does (`keepalive_requests 1000000`).
//!
//! Clients, each doing the same load against both servers:
//! - `ours`: `PersistentConnectionLayer::fixed_address(..).http2(Http2Connector::new())`,
//!   the crate's defaults;
//! - `legacy`: hyper-util's `client::legacy::Client` with `http2_only(true)` over the
//!   connector `build_http` makes (`HttpConnector`, TCP keep-alive at the pool's idle timeout),
//!   with `TCP_NODELAY` on as the crate's connector sets it, and a count of the connections it
//!   dials;
//! - `hyper`, the reference: raw hyper `SendRequest`s over `TcpStream`s (`TCP_NODELAY`), every
//!   task with its own clone of the current one, told nginx's limit (200) beforehand: it
//!   counts the requests on each connection, dials the next one at the 100th, swaps it in at
//!   the 200th (the last sent on the old one, which finishes its requests in flight), and
//!   never sends a 201st. That is the ideal rotation, with nothing to learn and nothing sent
//!   again: its ratio is what the server's rotation costs hyper, nginx and the kernel on this
//!   machine, whoever the client. (Its failures are reported, not asserted: in one of the
//!   runs published, one request of 610,000 met nginx's goodbye, cause not found.)
//!
//! Loads: `64 in flight` (64 tasks sharing a budget of N requests, each sending `GET /`,
//! reading the whole body, then the next) and `sequential` (one task, one request after the
//! other). A request fails if it errs, answers anything but `200 ok`, or takes more than 5 s.
//!
//! A round runs every case (3 clients x 2 servers x 2 loads) once, N requests each, with a
//! client of its own per case; each client and load runs its two cases (no rotation,
//! rotation) back to back, in alternating order, so that each round's ratio compares two runs
//! close in time (other processes on the machine come and go within seconds). The figures are
//! the medians over the rounds of the successful requests/s (a failed request is no
//! throughput), and of each round's own ratio rotation / no rotation per client and load;
//! failed requests are totals over all rounds, and so is the CPU time per request of the client
//! (this process's threads) and of nginx (its master and worker), from `/proc` (Linux).
//! `BENCH_VERBOSE=1` also prints every round.
//!
//! `cargo bench --bench rotation`: 61 rounds of 10,000 requests per case with 64 in flight
//! and 2,000 sequential, about 75 s. (A connection to the server without rotation must
//! never reach its 1,000,000 requests: 61 x 10,000 plus the warm-up stay below, and the bench
//! checks that `ours` made no connection there during the rounds.)
//! `cargo bench --bench rotation -- --test`: two rounds of 2,000 / 600 requests, asserting
//! that every case ran, that nginx rotated, and that `ours` failed no request (`legacy`'s
//! failures are reported, not asserted).
//!
//! The client's allocator matters here (each rotation frees and allocates a connection's
//! buffers while 64 requests are in flight). To run the clients over another one, preload it
//! into the built bench (nginx is started without `LD_PRELOAD`, so only the clients change):
//! `LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 target/release/deps/rotation-<hash>
//! --bench` (Debian packages `libmimalloc2.0`, `libjemalloc2`).
//!
//! Without an nginx binary the bench prints one line naming the Debian package `nginx` and
//! exits successfully, unless `REQUIRE_REAL_SERVERS=1` (then it fails).

#[path = "support/figures.rs"]
mod figures;
use figures::{median, min_max};
#[path = "../tests/support/chain.rs"]
mod chain;
#[path = "../tests/support/nginx.rs"]
mod nginx;
use chain::answered_ok;

use std::{
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use nginx::{Config, Nginx};
use persistent_connection::{
    BoxError, PersistentConnection, PersistentConnectionLayer,
    http::{Http2Connection, Http2Connector},
};
use tokio::{net::TcpStream, sync::watch, task::JoinSet};

/// nginx's request limit per connection in the rotating configuration (the reference client
/// knows it).
const LIMIT: u64 = 200;
use tower::{Service, ServiceExt};

type Body = Empty<Bytes>;

/// A bound on one request: a longer one is a failure.
const REQUEST_BOUND: Duration = Duration::from_secs(5);
/// Requests in flight in the concurrent load.
const IN_FLIGHT: usize = 64;

/// How much a run measures.
#[derive(Clone, Copy, Debug)]
struct Plan {
    rounds: usize,
    /// Requests per case and round, 64 in flight.
    concurrent: u64,
    /// Requests per case and round, sequential.
    sequential: u64,
}

const FULL: Plan = Plan {
    rounds: 61,
    concurrent: 10_000,
    sequential: 2_000,
};

const TEST: Plan = Plan {
    rounds: 2,
    concurrent: 2_000,
    sequential: 600,
};

// === the clients ===

/// The connector `build_http` makes, with `TCP_NODELAY`, counting the connections it dials.
#[derive(Clone)]
struct CountingConnector {
    http: HttpConnector,
    dialed: Arc<AtomicU64>,
}

impl Service<Uri> for CountingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        self.dialed.fetch_add(1, Ordering::Relaxed);
        let connecting = self.http.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// One client of the bench, connected to one nginx.
#[derive(Clone)]
enum Target {
    Ours(PersistentConnection<Http2Connection<Body>>),
    Legacy {
        // Boxed: the client is much larger than the other variant.
        client: Box<Client<CountingConnector, Body>>,
        uri: Uri,
        dialed: Arc<AtomicU64>,
    },
    /// The reference: this task's view of the current raw connection.
    Hyper {
        raw: Arc<RawHyper>,
        mine: Arc<RawConnection>,
        send: SendRequest<Body>,
        seen: watch::Receiver<u64>,
    },
}

/// A raw connection on its way.
type Dialing = tokio::task::JoinHandle<Result<SendRequest<Body>, BoxError>>;

/// One raw connection of the reference client, and the requests sent on it.
struct RawConnection {
    send: SendRequest<Body>,
    sent: AtomicU64,
}

/// The reference client's shared state: the current connection, replaced at `every`
/// requests if set.
struct RawHyper {
    addr: std::net::SocketAddr,
    uri: Uri,
    every: Option<u64>,
    current: Mutex<Arc<RawConnection>>,
    /// Bumped at each swap.
    generation: watch::Sender<u64>,
    spare: Mutex<Option<Dialing>>,
    dialed: AtomicU64,
}

impl RawHyper {
    /// A raw HTTP/2 connection to `addr`, its task spawned.
    async fn dial(addr: std::net::SocketAddr) -> Result<SendRequest<Body>, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        Ok(send)
    }

    /// Before each request: takes up the current connection if it changed, and counts the
    /// request on it. The request at half the limit dials the next connection; the one at
    /// the limit swaps it in (and is sent on the old one, its last); one past the limit waits
    /// for the swap. So no request is ever sent past the limit, and none waits unless the
    /// connection dialed ahead is not up by the limit.
    async fn take_turn(
        &self,
        mine: &mut Arc<RawConnection>,
        send: &mut SendRequest<Body>,
        seen: &mut watch::Receiver<u64>,
    ) -> Result<(), BoxError> {
        // Whether a swap was seen (`changed` marks it seen: `has_changed` no longer tells).
        let mut swapped = false;
        loop {
            if swapped || seen.has_changed()? {
                seen.borrow_and_update();
                *mine = self.current.lock().unwrap().clone();
                *send = mine.send.clone();
            }
            let Some(every) = self.every else {
                return Ok(());
            };
            let sent = mine.sent.fetch_add(1, Ordering::Relaxed) + 1;
            if sent == every / 2 {
                self.dialed.fetch_add(1, Ordering::Relaxed);
                *self.spare.lock().unwrap() = Some(tokio::spawn(Self::dial(self.addr)));
            }
            match sent.cmp(&every) {
                std::cmp::Ordering::Less => return Ok(()),
                std::cmp::Ordering::Equal => {
                    let spare = self.spare.lock().unwrap().take();
                    let next = match spare {
                        Some(dialing) => dialing.await??,
                        None => Self::dial(self.addr).await?,
                    };
                    *self.current.lock().unwrap() = Arc::new(RawConnection {
                        send: next,
                        sent: AtomicU64::new(0),
                    });
                    self.generation.send_modify(|generation| *generation += 1);
                    return Ok(());
                }
                std::cmp::Ordering::Greater => {
                    seen.changed().await?;
                    swapped = true;
                }
            }
        }
    }
}

impl Target {
    /// The crate's client of `nginx`, connected.
    async fn ours(nginx: &Nginx) -> Self {
        let svc = PersistentConnectionLayer::fixed_address(nginx.addr())
            .server_name("nginx")
            .http2(Http2Connector::<Body>::new());
        tokio::time::timeout(Duration::from_secs(5), svc.handle().connected())
            .await
            .expect("no connection to nginx within 5 s")
            .expect("closed before connecting");
        Self::Ours(svc)
    }

    /// hyper-util's legacy client of `nginx`.
    fn legacy(nginx: &Nginx) -> Self {
        let mut http = HttpConnector::new();
        // What `build_http` sets (the pool's default idle timeout, 90 s), plus TCP_NODELAY.
        http.set_keepalive(Some(Duration::from_secs(90)));
        http.set_nodelay(true);
        let dialed = Arc::new(AtomicU64::new(0));
        let connector = CountingConnector {
            http,
            dialed: dialed.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        let uri = format!("http://{}/", nginx.addr()).parse().unwrap();
        Self::Legacy {
            client: Box::new(client),
            uri,
            dialed,
        }
    }

    /// The reference client of `nginx`, connected, replacing its connection at `every`
    /// requests if set.
    async fn hyper(nginx: &Nginx, every: Option<u64>) -> Self {
        let send = RawHyper::dial(nginx.addr())
            .await
            .expect("a raw connection to nginx");
        let mine = Arc::new(RawConnection {
            send: send.clone(),
            sent: AtomicU64::new(0),
        });
        let (generation, seen) = watch::channel(0);
        let raw = Arc::new(RawHyper {
            addr: nginx.addr(),
            uri: format!("http://{}/", nginx.addr()).parse().unwrap(),
            every,
            current: Mutex::new(mine.clone()),
            generation,
            spare: Mutex::new(None),
            dialed: AtomicU64::new(0),
        });
        Self::Hyper {
            raw,
            mine,
            send,
            seen,
        }
    }

    /// Connections made so far: the layer's for ours, the connector's for legacy, the dials
    /// for the reference.
    fn connections(&self) -> u64 {
        match self {
            Self::Ours(svc) => svc.handle().stats().connections,
            Self::Legacy { dialed, .. } => dialed.load(Ordering::Relaxed),
            Self::Hyper { raw, .. } => raw.dialed.load(Ordering::Relaxed),
        }
    }

    /// Requests the crate sent again on a next connection (ours only).
    fn replayed(&self) -> u64 {
        match self {
            Self::Ours(svc) => svc.handle().stats().replayed_requests,
            Self::Legacy { .. } | Self::Hyper { .. } => 0,
        }
    }

    /// `GET /`, the whole body read, bounded by [`REQUEST_BOUND`]; `Ok` only for `200 ok`.
    async fn get(&mut self) -> Result<(), String> {
        let response = async {
            let response = match self {
                Self::Ours(svc) => {
                    let request = Request::get("/").body(Empty::new()).unwrap();
                    svc.ready().await?.call(request).await?
                }
                Self::Legacy { client, uri, .. } => {
                    let request = Request::get(uri.clone()).body(Empty::new()).unwrap();
                    client.request(request).await?
                }
                Self::Hyper {
                    raw,
                    mine,
                    send,
                    seen,
                } => {
                    raw.take_turn(mine, send, seen).await?;
                    send.ready().await?;
                    let request = Request::get(raw.uri.clone()).body(Empty::new()).unwrap();
                    send.send_request(request).await?
                }
            };
            Ok::<_, BoxError>(response)
        };
        answered_ok(REQUEST_BOUND, response).await
    }
}

// === the cases ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ClientKind {
    Ours,
    Legacy,
    Hyper,
}

impl ClientKind {
    const ALL: [Self; 3] = [Self::Ours, Self::Legacy, Self::Hyper];

    fn name(self) -> &'static str {
        match self {
            Self::Ours => "ours (Http2Connector + layer)",
            Self::Legacy => "hyper-util legacy Client",
            Self::Hyper => "reference: raw hyper, swapping ideally at the limit",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Load {
    InFlight,
    Sequential,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Self::InFlight => "64 in flight",
            Self::Sequential => "sequential",
        }
    }

    fn requests(self, plan: Plan) -> u64 {
        match self {
            Self::InFlight => plan.concurrent,
            Self::Sequential => plan.sequential,
        }
    }
}

/// One case: a client, a server (rotating or not), a load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Case {
    load: Load,
    client: ClientKind,
    rotating: bool,
}

/// What the rounds measured of one case.
#[derive(Debug, Default)]
struct CaseFigures {
    /// Requests/s, one per round.
    rates: Vec<f64>,
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    /// Connections made during the rounds, and requests sent again (ours).
    connections: u64,
    replayed: u64,
    /// CPU time used during the rounds: by this process (the client), by nginx.
    client_cpu: Duration,
    nginx_cpu: Duration,
}

impl CaseFigures {
    /// `cpu` over every request of the rounds, in µs.
    fn cpu_per_request(&self, cpu: &Duration) -> f64 {
        cpu.as_secs_f64() * 1e6 / (self.ok + self.failed).max(1) as f64
    }
}

/// The CPU time this process's threads have used so far (Linux: the sum of their
/// `/proc/self/task/<tid>/schedstat` run times); zero where that cannot be read.
fn client_cpu() -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let nanos = tasks
        .flatten()
        .filter_map(|task| {
            nginx::run_time(&format!(
                "/proc/self/task/{}/schedstat",
                task.file_name().to_string_lossy()
            ))
        })
        .sum();
    Duration::from_nanos(nanos)
}

/// Runs `requests` requests of `load` through `target`; returns (elapsed, ok, failures).
async fn run_load(
    target: &Target,
    load: Load,
    requests: u64,
) -> (Duration, u64, BTreeMap<String, u64>) {
    let loops = match load {
        Load::InFlight => IN_FLIGHT,
        Load::Sequential => 1,
    };
    let budget = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..loops {
        let (mut target, budget, ok, errors) =
            (target.clone(), budget.clone(), ok.clone(), errors.clone());
        tasks.spawn(async move {
            while budget.fetch_add(1, Ordering::Relaxed) < requests {
                match target.get().await {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => *errors.lock().unwrap().entry(error).or_default() += 1,
                }
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a request loop panicked");
    }
    let elapsed = start.elapsed();
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    (elapsed, ok.load(Ordering::Relaxed), errors)
}

async fn bench(plan: Plan, test: bool) -> Result<(), String> {
    let Some(rotating) = Nginx::start(Config::h2c().directive("keepalive_requests 200;")).await
    else {
        return Ok(());
    };
    let Some(steady) = Nginx::start(Config::h2c().directive("keepalive_requests 1000000;")).await
    else {
        return Ok(());
    };

    // One client per case, so that no connection to the server without rotation reaches its
    // 1,000,000 requests.
    let mut targets = BTreeMap::new();
    let mut pairs = Vec::new();
    for load in [Load::InFlight, Load::Sequential] {
        for client in ClientKind::ALL {
            pairs.push((load, client));
            for (rotating, nginx) in [(false, &steady), (true, &rotating)] {
                let target = match client {
                    ClientKind::Ours => Target::ours(nginx).await,
                    ClientKind::Legacy => Target::legacy(nginx),
                    ClientKind::Hyper => Target::hyper(nginx, rotating.then_some(LIMIT)).await,
                };
                let case = Case {
                    load,
                    client,
                    rotating,
                };
                targets.insert(case, target);
            }
        }
    }

    // A warm-up pass (not measured): connections made, nginx's worker and the allocator warm.
    for (case, target) in &targets {
        let _ = run_load(target, case.load, case.load.requests(plan) / 4).await;
    }

    let start = Instant::now();
    let mut figures: BTreeMap<Case, CaseFigures> = BTreeMap::new();
    for round in 0..plan.rounds {
        // Each client and load runs its two cases back to back (so that each round's ratio
        // compares two runs close in time), without rotation first in even rounds, with
        // rotation first in odd ones; the pairs go in reverse order every other round.
        let mut order = Vec::new();
        for &(load, client) in &pairs {
            for rotating in [round % 2 == 1, round % 2 == 0] {
                order.push(Case {
                    load,
                    client,
                    rotating,
                });
            }
        }
        if round % 4 >= 2 {
            order.reverse();
        }
        for case in order {
            let target = &targets[&case];
            let requests = case.load.requests(plan);
            let (connections, replayed) = (target.connections(), target.replayed());
            let nginx = if case.rotating { &rotating } else { &steady };
            let cpu = (client_cpu(), nginx.cpu_time().unwrap_or_default());
            let (elapsed, ok, errors) = run_load(target, case.load, requests).await;
            let entry = figures.entry(case).or_default();
            entry.client_cpu += client_cpu().saturating_sub(cpu.0);
            entry.nginx_cpu += nginx.cpu_time().unwrap_or_default().saturating_sub(cpu.1);
            // Successful requests/s: a failed request (often fast) is no throughput.
            entry.rates.push(ok as f64 / elapsed.as_secs_f64());
            entry.ok += ok;
            for (error, count) in errors {
                entry.failed += count;
                *entry.errors.entry(error).or_default() += count;
            }
            entry.connections += target.connections() - connections;
            entry.replayed += target.replayed() - replayed;
        }
    }
    let elapsed = start.elapsed();
    for target in targets.values() {
        if let Target::Ours(svc) = target {
            svc.handle().close().await;
        }
    }

    print_report(plan, &figures, elapsed);
    check(plan, &figures, test)
}

fn print_report(plan: Plan, figures: &BTreeMap<Case, CaseFigures>, elapsed: Duration) {
    if std::env::var("BENCH_VERBOSE").is_ok_and(|v| v == "1") {
        for (case, figures) in figures {
            let rates: Vec<String> = figures.rates.iter().map(|r| format!("{r:.0}")).collect();
            println!("{case:?}: {}", rates.join(" "));
        }
    }
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_default();
    println!();
    println!(
        "Graceful rotation under load: nginx `keepalive_requests 200` (rotation) vs `1000000` \
         (none); {} rounds, {} requests per case and round with 64 in flight, {} sequential; \
         {:.0} s; {date}",
        plan.rounds,
        plan.concurrent,
        plan.sequential,
        elapsed.as_secs_f64()
    );
    println!();
    println!(
        "| load | client | req/s no rotation, median (min-max) | req/s rotation, median \
         (min-max) | rotation / no rotation, median of rounds (min-max) | failed, no rotation \
         | failed, rotation | connections made, no rotation / rotation | client CPU µs per \
         request, no rotation / rotation | nginx CPU µs per request, no rotation / rotation |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for load in [Load::InFlight, Load::Sequential] {
        for client in ClientKind::ALL {
            let get = |rotating| {
                &figures[&Case {
                    load,
                    client,
                    rotating,
                }]
            };
            let (steady, rot) = (get(false), get(true));
            let ratios: Vec<f64> = rot
                .rates
                .iter()
                .zip(&steady.rates)
                .map(|(r, s)| r / s)
                .collect();
            let (s_lo, s_hi) = min_max(&steady.rates);
            let (r_lo, r_hi) = min_max(&rot.rates);
            let (q_lo, q_hi) = min_max(&ratios);
            println!(
                "| {} | {} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {:.3}x ({:.3}-{:.3}) | \
                 {} of {} | {} of {} | {} / {} | {:.2} / {:.2} | {:.2} / {:.2} |",
                load.name(),
                client.name(),
                median(&steady.rates),
                s_lo,
                s_hi,
                median(&rot.rates),
                r_lo,
                r_hi,
                median(&ratios),
                q_lo,
                q_hi,
                steady.failed,
                steady.ok + steady.failed,
                rot.failed,
                rot.ok + rot.failed,
                steady.connections,
                rot.connections,
                steady.cpu_per_request(&steady.client_cpu),
                rot.cpu_per_request(&rot.client_cpu),
                steady.cpu_per_request(&steady.nginx_cpu),
                rot.cpu_per_request(&rot.nginx_cpu),
            );
        }
    }
    println!();
    for (case, figures) in figures {
        let name = format!(
            "{} / {} / {}",
            case.load.name(),
            case.client.name(),
            if case.rotating {
                "rotation"
            } else {
                "no rotation"
            }
        );
        if case.client == ClientKind::Ours && figures.replayed > 0 {
            println!(
                "- {name}: {} requests sent again on the next connection (none failed)",
                figures.replayed
            );
        }
        for (error, count) in &figures.errors {
            println!("- {name}: {count} x {error}");
        }
    }
}

/// Every case ran all its requests, nginx rotated, and ours failed none.
fn check(plan: Plan, figures: &BTreeMap<Case, CaseFigures>, test: bool) -> Result<(), String> {
    let mut problems = Vec::new();
    for (case, figures) in figures {
        let expected = case.load.requests(plan) * plan.rounds as u64;
        if figures.ok + figures.failed != expected || figures.rates.len() != plan.rounds {
            problems.push(format!(
                "{case:?}: {} requests done of {expected}",
                figures.ok + figures.failed
            ));
        }
        if case.client == ClientKind::Ours && figures.failed > 0 {
            problems.push(format!(
                "{case:?}: {} requests failed: {:?}",
                figures.failed, figures.errors
            ));
        }
        if !case.rotating && case.client == ClientKind::Ours && figures.connections > 0 {
            problems.push(format!(
                "{case:?}: {} connections made without rotation: nginx's keepalive_requests \
                 1000000 was reached, lower the requests per round",
                figures.connections
            ));
        }
        // 200 requests per connection: at least one new connection per 400 requests.
        if case.rotating && figures.connections < expected / 400 {
            problems.push(format!(
                "{case:?}: only {} connections for {expected} requests: nginx did not rotate",
                figures.connections
            ));
        }
    }
    if problems.is_empty() {
        if test {
            println!("rotation: every case ran; ours failed no request");
        }
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn main() {
    let test = std::env::args().any(|arg| arg == "--test");
    let plan = if test { TEST } else { FULL };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    if let Err(problems) = runtime.block_on(bench(plan, test)) {
        eprintln!("rotation: {problems}");
        std::process::exit(1);
    }
}
