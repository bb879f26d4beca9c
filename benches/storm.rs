//! Reconnect storm: 1,000 clients, each its own `PersistentConnection`, connected to one
//! server that crashes and stays down for D seconds (D = 5, 30, 300), for the default retry
//! policy and each policy the crate ships.
//!
//! Time is Tokio's paused clock (a current-thread runtime started paused): the clock jumps to
//! the next timer whenever every task is idle, so 300 simulated seconds take a fraction of a
//! second, and every figure is exact. The jitter is seeded (`rng_seed`), so two runs give the
//! same attempts, to the millisecond.
//!
//! The server is simulated by each client's maker, from the clock alone: a connect before the
//! crash succeeds, one while the server is down fails at once ("connection refused"), one
//! after its return succeeds at once. Every connection made before the crash ends at the
//! crash, through its close signal, with an error (a crashed server does not say goodbye).
//! The maker records every attempt's time.
//!
//! Timeline: the clients connect at 0 s, the server crashes at 60 s (every connection is then
//! older than the flap guard and than its retry delay, as in a long-running fleet), and comes
//! back at 60 s + D.
//!
//! Figures per policy and D:
//! - attempts per client from the crash to its reconnection (both included): median, max;
//! - recovery lag, from the server's return to the client's connection: p50, p99, max;
//! - the peak number of attempts (all clients) in a 100 ms window: after the server's return
//!   (windows aligned on the return) and overall (windows aligned on the crash).
//!
//! Modes:
//! - `cargo bench --bench storm`: 1,000 clients; prints the tables and writes the plots to
//!   `docs/storm/` (one SVG per D, one panel per policy: attempts per 100 ms over time);
//! - `cargo bench --bench storm -- --test`: 200 clients, every case, with assertions (every
//!   client that does not give up reconnects; the counts add up; a case run twice gives the
//!   same attempts); the plots go to the target folder instead (`target/release/storm/`).

#[path = "storm/plot.rs"]
mod plot;

use std::{
    fmt::Write as _,
    future::{Future, Ready},
    io,
    path::PathBuf,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use persistent_connection::{
    Handle, PersistentConnection, PersistentConnectionLayer,
    close::CloseReason,
    retry::{Exponential, RetryPolicy as _},
};
use tokio::time::Instant;
use tower::Service;

/// When the server crashes, after the clients connected at 0 s.
const CRASH_AT: Duration = Duration::from_secs(60);
/// How long the server stays down.
const OUTAGES: [u64; 3] = [5, 30, 300];
/// The window of the peak figures and of the plots.
const WINDOW: Duration = Duration::from_millis(100);
/// The seed of every layer's jitter.
const SEED: u64 = 2026;
/// How long after the server's return a case may run (simulated) before it is cut off: far
/// beyond every policy's longest delay (gRPC's 120 s cap, +30 %).
const HORIZON: Duration = Duration::from_secs(3600);

// === the policies ===

/// A policy under test: its name in the tables and plots, and how it sets up a layer.
struct Policy {
    name: &'static str,
    short: &'static str,
    apply: fn(PersistentConnectionLayer<Addr>) -> PersistentConnectionLayer<Addr>,
    /// Whether the policy may give up (so not every client reconnects).
    gives_up: bool,
}

fn policies() -> Vec<Policy> {
    vec![
        Policy {
            name: "default: Constant 10 s, jitter ±30 %",
            short: "default",
            apply: |layer| layer,
            gives_up: false,
        },
        Policy {
            name: "Constant 10 s, jitter 0 (.jitter(0.0))",
            short: "constant-no-jitter",
            apply: |layer| layer.jitter(0.0),
            gives_up: false,
        },
        Policy {
            name: "Exponential::grpc() (1 s, x1.6, cap 120 s), jitter ±30 %",
            short: "grpc",
            apply: |layer| layer.retry_policy(Exponential::grpc()),
            gives_up: false,
        },
        Policy {
            name: "Exponential::grpc(), jitter ±20 % (gRPC's own)",
            short: "grpc-jitter-20",
            apply: |layer| layer.retry_policy(Exponential::grpc()).jitter(0.2),
            gives_up: false,
        },
        Policy {
            name: "Exponential::new(100 ms, x2, cap 10 s), jitter ±30 %",
            short: "exp-100ms-10s",
            apply: |layer| {
                layer.retry_policy(Exponential::new(
                    Duration::from_millis(100),
                    2.0,
                    Duration::from_secs(10),
                ))
            },
            gives_up: false,
        },
        Policy {
            name: "Exponential::grpc().give_up_after(10), jitter ±30 %",
            short: "grpc-give-up-10",
            apply: |layer| layer.retry_policy(Exponential::grpc().give_up_after(10)),
            gives_up: true,
        },
    ]
}

// === the simulated server ===

type Addr = &'static str;

/// One attempt: which client, when (since the start), and whether it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attempt {
    client: u32,
    at: Duration,
    ok: bool,
}

/// The server's timeline and the record of attempts, shared by every client's maker.
struct Server {
    start: Instant,
    crash: Instant,
    back: Instant,
    attempts: Mutex<Vec<Attempt>>,
    /// Clients connected since the server's return.
    recovered: AtomicUsize,
}

/// One client's maker: connects to the simulated server.
#[derive(Clone)]
struct Maker {
    client: u32,
    server: Arc<Server>,
}

/// A connection: it ends at the crash if it was made before it, else never.
#[derive(Clone)]
struct Conn {
    ends_at: Option<Instant>,
}

impl Conn {
    fn closed(&self) -> Pin<Box<dyn Future<Output = CloseReason> + Send>> {
        let ends_at = self.ends_at;
        Box::pin(async move {
            match ends_at {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    CloseReason::Error("the server crashed".into())
                }
                None => std::future::pending().await,
            }
        })
    }
}

impl Service<Addr> for Maker {
    type Response = Conn;
    type Error = io::Error;
    type Future = Ready<Result<Conn, io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Addr) -> Self::Future {
        let server = &self.server;
        let now = Instant::now();
        let outcome = if now < server.crash {
            Ok(Conn {
                ends_at: Some(server.crash),
            })
        } else if now < server.back {
            Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))
        } else {
            server.recovered.fetch_add(1, Ordering::Relaxed);
            Ok(Conn { ends_at: None })
        };
        server.attempts.lock().unwrap().push(Attempt {
            client: self.client,
            at: now - server.start,
            ok: outcome.is_ok(),
        });
        std::future::ready(outcome)
    }
}

// === one case ===

/// What one case (a policy, an outage) recorded.
struct Run {
    clients: u32,
    /// Every attempt from the crash on, in order.
    attempts: Vec<Attempt>,
    /// Each client's reconnection time (since the start), `None` if it gave up.
    reconnected: Vec<Option<Duration>>,
    gave_up: usize,
    back: Duration,
}

/// Runs one case on a fresh paused runtime.
fn run_case(policy: &Policy, outage: Duration, clients: u32) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(async {
        let start = Instant::now();
        let server = Arc::new(Server {
            start,
            crash: start + CRASH_AT,
            back: start + CRASH_AT + outage,
            attempts: Mutex::new(Vec::new()),
            recovered: AtomicUsize::new(0),
        });
        let layer = (policy.apply)(PersistentConnectionLayer::fixed_address("server"))
            .rng_seed(SEED)
            .close_signal(Conn::closed);
        let services: Vec<PersistentConnection<Conn>> = (0..clients)
            .map(|client| {
                tower::Layer::layer(
                    &layer,
                    Maker {
                        client,
                        server: server.clone(),
                    },
                )
            })
            .collect();
        let handles: Vec<Handle<Conn>> = services.iter().map(|svc| svc.handle()).collect();

        // Until every client has reconnected or given up, at most HORIZON after the return.
        tokio::time::sleep_until(server.back).await;
        let deadline = server.back + HORIZON;
        loop {
            let recovered = server.recovered.load(Ordering::Relaxed);
            let gave_up = handles.iter().filter(|h| h.is_closed()).count();
            if recovered + gave_up >= clients as usize || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let gave_up = handles.iter().filter(|h| h.is_closed()).count();
        drop(services);
        drop(handles);

        let crash = CRASH_AT;
        let back = CRASH_AT + outage;
        let attempts: Vec<Attempt> = {
            let all = server.attempts.lock().unwrap();
            all.iter().copied().filter(|a| a.at >= crash).collect()
        };
        let mut reconnected = vec![None; clients as usize];
        for attempt in attempts.iter().filter(|a| a.ok && a.at >= back) {
            reconnected[attempt.client as usize].get_or_insert(attempt.at);
        }
        Run {
            clients,
            attempts,
            reconnected,
            gave_up,
            back,
        }
    })
}

// === figures ===

/// The figures of one case.
struct Figures {
    attempts_median: u64,
    attempts_max: u64,
    attempts_total: usize,
    reconnected: usize,
    gave_up: usize,
    lag_p50: Option<Duration>,
    lag_p99: Option<Duration>,
    lag_max: Option<Duration>,
    peak_after_return: usize,
    peak_overall: usize,
    /// A digest of every attempt (client, time, outcome): equal digests, equal runs.
    digest: u64,
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// The largest number of attempts in one window, windows aligned on `from`; attempts before
/// `from` are not counted.
fn peak(attempts: &[Attempt], from: Duration) -> usize {
    let mut counts = std::collections::HashMap::<u128, usize>::new();
    for attempt in attempts.iter().filter(|a| a.at >= from) {
        *counts
            .entry((attempt.at - from).as_nanos() / WINDOW.as_nanos())
            .or_default() += 1;
    }
    counts.into_values().max().unwrap_or(0)
}

fn figures(run: &Run) -> Figures {
    let mut per_client = vec![0u64; run.clients as usize];
    for attempt in &run.attempts {
        // Attempts up to the client's reconnection (none come after it: the new connection
        // never ends).
        per_client[attempt.client as usize] += 1;
    }
    per_client.sort_unstable();
    let mut lags: Vec<Duration> = run
        .reconnected
        .iter()
        .flatten()
        .map(|at| *at - run.back)
        .collect();
    lags.sort_unstable();
    // FNV-1a over (client, nanoseconds, outcome): the same on every platform and toolchain.
    let digest = run
        .attempts
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, a| {
            let bytes = [
                u128::from(a.client).to_le_bytes(),
                a.at.as_nanos().to_le_bytes(),
                u128::from(a.ok).to_le_bytes(),
            ];
            bytes.iter().flatten().fold(hash, |hash, byte| {
                (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
            })
        });
    Figures {
        attempts_median: quantile(&per_client, 0.5).unwrap_or(0),
        attempts_max: per_client.last().copied().unwrap_or(0),
        attempts_total: run.attempts.len(),
        reconnected: lags.len(),
        gave_up: run.gave_up,
        lag_p50: quantile(&lags, 0.5),
        lag_p99: quantile(&lags, 0.99),
        lag_max: lags.last().copied(),
        peak_after_return: peak(&run.attempts, run.back),
        peak_overall: peak(&run.attempts, CRASH_AT),
        digest,
    }
}

fn seconds(duration: Option<Duration>) -> String {
    match duration {
        Some(duration) => format!("{:.3}", duration.as_secs_f64()),
        None => "-".to_string(),
    }
}

/// The markdown table of one outage.
fn table(outage: u64, clients: u32, rows: &[(&Policy, Figures)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Server down {outage} s, {clients} clients (attempts from the crash on; lag from the \
         server's return, in seconds):\n"
    );
    let _ = writeln!(
        out,
        "| policy | attempts/client median | max | attempts total | reconnected | gave up \
         | lag p50 (s) | lag p99 (s) | lag max (s) | peak /100 ms after return | peak /100 ms overall |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (policy, f) in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            policy.name,
            f.attempts_median,
            f.attempts_max,
            f.attempts_total,
            f.reconnected,
            f.gave_up,
            seconds(f.lag_p50),
            seconds(f.lag_p99),
            seconds(f.lag_max),
            f.peak_after_return,
            f.peak_overall,
        );
    }
    out
}

// === main ===

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` passes neither flag: a test.
    let test = args.iter().any(|arg| arg == "--test") || !args.iter().any(|arg| arg == "--bench");
    let clients: u32 = if test { 200 } else { 1000 };
    let plots = if test {
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.parent()?.join("storm")))
            .unwrap_or_else(|| PathBuf::from("target/storm"))
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/storm")
    };
    std::fs::create_dir_all(&plots).expect("the plots' folder");

    let policies = policies();
    let started = std::time::Instant::now();
    let mut digests = String::new();
    for outage in OUTAGES {
        let outage_d = Duration::from_secs(outage);
        let mut rows = Vec::new();
        let mut runs = Vec::new();
        for policy in &policies {
            let run = run_case(policy, outage_d, clients);
            let f = figures(&run);
            check(policy, &run, &f);
            let _ = writeln!(
                digests,
                "D = {outage:>3} s  {:<20} {:016x}",
                policy.short, f.digest
            );
            rows.push((policy, f));
            runs.push(run);
        }
        println!("{}", table(outage, clients, &rows));
        let series: Vec<plot::Series<'_>> = policies
            .iter()
            .zip(&runs)
            .map(|(policy, run)| plot::Series {
                name: policy.name,
                times: run.attempts.iter().map(|a| a.at - CRASH_AT).collect(),
            })
            .collect();
        let file = plots.join(format!("storm-down-{outage}s.svg"));
        plot::draw(
            &file,
            &format!(
                "{clients} clients, server down from 0 s to {outage} s (shaded): connection \
                 attempts per 100 ms (log scale)"
            ),
            Duration::from_secs(outage),
            &series,
        )
        .unwrap_or_else(|error| panic!("plotting {}: {error}", file.display()));
        println!("plot: {}\n", file.display());
    }
    println!("Digests of the attempts (equal across runs: the figures are reproducible):\n");
    println!("```\n{digests}```");

    if test {
        // Reproducibility: the same case again gives the very same attempts.
        let policy = &policies[0];
        let outage = Duration::from_secs(OUTAGES[0]);
        let (a, b) = (
            run_case(policy, outage, clients),
            run_case(policy, outage, clients),
        );
        assert_eq!(a.attempts, b.attempts, "two runs of one case differ");
        println!(
            "reproducible: two runs of ({}, D = 5 s) are identical",
            policy.short
        );
    }
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
}

/// What holds in every case.
fn check(policy: &Policy, run: &Run, f: &Figures) {
    let clients = run.clients as usize;
    // Every client loses its connection at the crash and tries again at once.
    let at_crash = run.attempts.iter().filter(|a| a.at == CRASH_AT).count();
    assert_eq!(at_crash, clients, "{}: attempts at the crash", policy.name);
    // No attempt succeeds while the server is down, and each client reconnects once.
    assert!(
        run.attempts.iter().all(|a| a.ok == (a.at >= run.back)),
        "{}: an attempt's outcome does not match the server's state",
        policy.name
    );
    assert_eq!(
        run.attempts.iter().filter(|a| a.ok).count(),
        f.reconnected,
        "{}: one successful attempt per reconnected client",
        policy.name
    );
    if policy.gives_up {
        assert_eq!(
            f.reconnected + f.gave_up,
            clients,
            "{}: every client reconnects or gives up",
            policy.name
        );
    } else {
        assert_eq!(
            f.reconnected, clients,
            "{}: every client reconnects",
            policy.name
        );
        assert_eq!(f.gave_up, 0, "{}: no client gives up", policy.name);
    }
    let mut per_client = vec![0usize; clients];
    for attempt in &run.attempts {
        per_client[attempt.client as usize] += 1;
    }
    assert!(
        per_client.iter().all(|n| *n >= 1),
        "{}: every client attempts after the crash",
        policy.name
    );
    assert_eq!(
        per_client.iter().sum::<usize>(),
        f.attempts_total,
        "{}: attempts counted",
        policy.name
    );
}
