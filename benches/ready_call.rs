//! The cost of `poll_ready` + `call` through a connected `PersistentConnection`, against the
//! bare connection it wraps.
//!
//! Cases of the `ready_call` group (one request each: `poll_ready`, `call`, await):
//! - `baseline`: the bare connection, a trivial service that never allocates;
//! - `persistent`: the same connection wrapped by the layer, connected;
//! - `persistent_8_clones`: eight clones of the wrapped service, used round-robin.
//!
//! After criterion's report, the run measures each case again in interleaved rounds and prints
//! the ratio of each wrapped case to the baseline.
//!
//! `cargo bench --bench ready_call` for the numbers; `cargo bench --bench ready_call -- --quick`
//! for a short run; `cargo bench --bench ready_call -- --test` only checks that each case runs.

use std::{
    convert::Infallible,
    future::poll_fn,
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::Criterion;
use persistent_connection::{PersistentConnection, PersistentConnectionLayer};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, service_fn};

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::Echo;

/// One request: `poll_ready`, `call`, await the response.
async fn ready_call<S>(svc: &mut S, n: u64) -> u64
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
    svc.call(n).await.unwrap()
}

/// A current-thread runtime, as the service would run on in a single-threaded client.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `Echo` wrapped by the layer, and connected.
fn persistent(rt: &Runtime) -> PersistentConnection<Echo> {
    rt.block_on(async {
        let maker = service_fn(|_: &'static str| async { Ok::<_, Infallible>(Echo) });
        let mut svc = PersistentConnectionLayer::fixed_address("echo").layer(maker);
        svc.ready().await.unwrap();
        svc
    })
}

/// Times `iters` requests inside `rt.block_on`, sent through `services` in turn.
fn time_requests<S>(rt: &Runtime, iters: u64, services: &mut [S]) -> Duration
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    rt.block_on(async {
        let mut next = 0;
        let start = Instant::now();
        for i in 0..iters {
            black_box(ready_call(&mut services[next], black_box(i)).await);
            next += 1;
            if next == services.len() {
                next = 0;
            }
        }
        start.elapsed()
    })
}

fn bench_ready_call(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("ready_call");

    let mut bare = [Echo];
    group.bench_function("baseline", |b| {
        b.iter_custom(|iters| time_requests(rt, iters, &mut bare));
    });

    let mut wrapped = [persistent(rt)];
    group.bench_function("persistent", |b| {
        b.iter_custom(|iters| time_requests(rt, iters, &mut wrapped));
    });

    let mut clones: Vec<_> = (0..8).map(|_| wrapped[0].clone()).collect();
    group.bench_function("persistent_8_clones", |b| {
        b.iter_custom(|iters| time_requests(rt, iters, &mut clones));
    });

    group.finish();
}

/// Measures again, briefly, for the ratio: rounds of requests through each case in turn, so
/// that drift on the machine (other processes, clock frequency) hits every case alike, and the
/// median round of each case. Prints the ratio of each wrapped case to the baseline.
fn print_ratio(rt: &Runtime) {
    const ROUNDS: usize = 21;
    const REQUESTS: u64 = 100_000;
    let mut bare = [Echo];
    let mut wrapped = [persistent(rt)];
    let mut clones: Vec<_> = (0..8).map(|_| wrapped[0].clone()).collect();
    let mut rounds: [Vec<Duration>; 3] = Default::default();
    for _ in 0..ROUNDS {
        rounds[0].push(time_requests(rt, REQUESTS, &mut bare));
        rounds[1].push(time_requests(rt, REQUESTS, &mut wrapped));
        rounds[2].push(time_requests(rt, REQUESTS, &mut clones));
    }
    let [baseline, persistent, clones] = rounds.map(|mut times| {
        times.sort();
        times[ROUNDS / 2].as_nanos() as f64 / REQUESTS as f64
    });
    println!(
        "ready_call, median of {ROUNDS} interleaved rounds of {REQUESTS} requests:\n  \
         baseline            {baseline:6.2} ns\n  \
         persistent          {persistent:6.2} ns  = {:.2} x baseline\n  \
         persistent_8_clones {clones:6.2} ns  = {:.2} x baseline",
        persistent / baseline,
        clones / baseline,
    );
}

fn main() {
    let rt = runtime();
    let mut c = Criterion::default().configure_from_args();
    bench_ready_call(&mut c, &rt);
    c.final_summary();

    // Not in test mode (`--test`, or `cargo test --benches`, which passes no `--bench`) or
    // when listing: there the numbers would mean nothing.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|arg| arg == flag);
    if has("--bench") && !has("--test") && !has("--list") {
        print_ratio(&rt);
    }
}
