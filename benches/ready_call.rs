//! The cost of `poll_ready` + `call` through a connected `PersistentConnection`, against the
//! bare connection it wraps and against tower's own middlewares for the same job.
//!
//! Cases of the `ready_call` group (one request each: `poll_ready`, `call`, await; all on one
//! current-thread runtime):
//! - `baseline`: the bare connection, a trivial service that never allocates;
//! - `persistent`: the same connection wrapped by the layer, connected;
//! - `persistent_8_clones`: eight clones of the wrapped service, used round-robin;
//! - `reconnect`: the same connection in `tower::reconnect::Reconnect`, connected;
//! - `buffer`: the same connection behind `tower::buffer::Buffer` (bound 1024, tonic's
//!   default), whose worker task runs on the same runtime.
//!
//! The interleaved rounds (below) also time `minimal_wrapper`: a reference wrapper of one
//! acquire load and compare (`Pending` if the word changed) with a hand-written response
//! future, the floor for any wrapper that can be `Pending`.
//!
//! Cases of the `contention` group (each thread drives its own current-thread runtime and its
//! own clone; the time is the mean over the threads of each one's time per request):
//! - `baseline_1_thread`, `baseline_2_threads`: bare connections, which share nothing;
//! - `persistent_1_thread`, `persistent_2_threads`: clones of one connected service, so the
//!   threads share its state.
//!
//! After criterion's report, the run measures each case again in interleaved rounds and prints
//! the medians, and the median over the rounds of each round's ratio to the baseline (for
//! contention: of the persistent case's growth from 1 to 2 threads to the baseline's growth).
//! The current-thread rounds run in turn at four placements of the stack within a cache line
//! (moved by 0, 16, 32 and 48 bytes), and the figures are given for each placement too: at
//! two of them every loop here, the bare one included, runs about 12 % slower, and which two
//! depends on where the kernel started the process's stack, so without this the figures of
//! one run fell in one group or the other by chance.
//!
//! `cargo bench --bench ready_call` for the numbers; `cargo bench --bench ready_call -- '^$'`
//! for the interleaved rounds alone (the filter matches no criterion case);
//! `cargo bench --bench ready_call -- --quick` for a short run;
//! `cargo bench --bench ready_call -- --test` only checks that each case runs.

#[path = "support/figures.rs"]
mod figures;
use figures::median;
use std::{
    convert::Infallible,
    future::poll_fn,
    hint::black_box,
    sync::Barrier,
    time::{Duration, Instant},
};

use criterion::Criterion;
use persistent_connection::{BoxError, PersistentConnection, PersistentConnectionLayer};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt, buffer::Buffer, reconnect::Reconnect, service_fn};

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

// === the services ===

/// `Echo` wrapped by the layer, and connected.
fn persistent(rt: &Runtime) -> PersistentConnection<Echo> {
    rt.block_on(async {
        let maker = service_fn(|_: &'static str| async { Ok::<_, Infallible>(Echo) });
        let mut svc = PersistentConnectionLayer::fixed_address("echo").layer(maker);
        svc.ready().await.unwrap();
        svc
    })
}

/// `Echo` in tower's `Reconnect`, connected. (`Reconnect` needs an `Unpin` maker future.)
fn reconnect(rt: &Runtime) -> impl Service<u64, Response = u64, Error = BoxError> {
    rt.block_on(async {
        let maker = service_fn(|_: &'static str| std::future::ready(Ok::<_, Infallible>(Echo)));
        let mut svc = Reconnect::new(maker, "echo");
        svc.ready().await.unwrap();
        svc
    })
}

/// `Echo` behind tower's `Buffer`, its worker spawned on `rt`.
fn buffer(rt: &Runtime) -> impl Service<u64, Response = u64, Error = BoxError> {
    let _entered = rt.enter();
    Buffer::new(Echo, 1024)
}

/// A reference wrapper: one acquire load and compare against a shared word, `Pending` (after a
/// wake) if it changed, the connection's own readiness otherwise, and a hand-written response
/// future that boxes the error. What any wrapper that can be `Pending` costs at least.
#[derive(Clone)]
struct Minimal<S> {
    word: std::sync::Arc<std::sync::atomic::AtomicU64>,
    seen: u64,
    inner: S,
}

impl<S: Service<u64>> Service<u64> for Minimal<S>
where
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = MinimalFuture<S::Future>;

    #[inline]
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.word.load(std::sync::atomic::Ordering::Acquire) != self.seen {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: u64) -> Self::Future {
        MinimalFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project_lite::pin_project! {
    struct MinimalFuture<F> { #[pin] inner: F }
}

impl<F, T, E> std::future::Future for MinimalFuture<F>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(Into::into)
    }
}

/// `Echo` in [`Minimal`].
fn minimal() -> Minimal<Echo> {
    Minimal {
        word: std::sync::Arc::default(),
        seen: 0,
        inner: Echo,
    }
}

// === timing ===

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

/// Sends `iters` requests from each of `threads` threads at once, each through its own clone
/// of `service` on its own current-thread runtime; returns the mean of the threads' times.
fn time_threads<S>(threads: usize, iters: u64, service: &S) -> Duration
where
    S: Service<u64, Response = u64> + Clone + Send,
    S::Error: std::fmt::Debug,
{
    let start = Barrier::new(threads);
    let clones: Vec<S> = (0..threads).map(|_| service.clone()).collect();
    let total: Duration = std::thread::scope(|scope| {
        let workers: Vec<_> = clones
            .into_iter()
            .map(|mut clone| {
                let start = &start;
                scope.spawn(move || {
                    let rt = runtime();
                    start.wait();
                    time_requests(&rt, iters, std::slice::from_mut(&mut clone))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    total / threads as u32
}

// === criterion ===

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

    let mut reconnect = [reconnect(rt)];
    group.bench_function("reconnect", |b| {
        b.iter_custom(|iters| time_requests(rt, iters, &mut reconnect));
    });

    let mut buffer = [buffer(rt)];
    group.bench_function("buffer", |b| {
        b.iter_custom(|iters| time_requests(rt, iters, &mut buffer));
    });

    group.finish();
}

fn bench_contention(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("contention");
    let wrapped = persistent(rt);
    for threads in [1, 2] {
        let plural = if threads == 1 { "" } else { "s" };
        group.bench_function(format!("baseline_{threads}_thread{plural}"), |b| {
            b.iter_custom(|iters| time_threads(threads, iters, &Echo));
        });
        group.bench_function(format!("persistent_{threads}_thread{plural}"), |b| {
            b.iter_custom(|iters| time_threads(threads, iters, &wrapped));
        });
    }
    group.finish();
}

// === interleaved rounds ===

/// Rounds of each case in turn, so that drift on the machine (other processes, clock
/// frequency) hits every case alike.
const ROUNDS: usize = 21;

/// The current-thread rounds: as many at each of [`STACK_OFFSETS`].
const OFFSET_ROUNDS: usize = 28;

/// Where, within a 64-byte cache line, the measured loop's stack lies, moved by this many bytes
/// in turn from round to round. At a few nanoseconds per request the loops' speed depends on
/// it (every case's, the bare one's too): without this the start of the process's stack,
/// which the kernel randomizes, would pick one placement per run (see BENCHMARKS.md).
const STACK_OFFSETS: [usize; 4] = [0, 16, 32, 48];

/// Runs `f` with the stack moved down by `offset` bytes, one of [`STACK_OFFSETS`].
fn at_stack_offset<R>(offset: usize, mut f: impl FnMut() -> R) -> R {
    match offset {
        0 => below::<0, R>(&mut f),
        16 => below::<16, R>(&mut f),
        32 => below::<32, R>(&mut f),
        48 => below::<48, R>(&mut f),
        _ => unreachable!("{offset} is not one of STACK_OFFSETS"),
    }
}

/// Calls `f` from a frame `N` bytes larger (`N` a multiple of 16, the stack's alignment).
#[inline(never)]
fn below<const N: usize, R>(f: &mut dyn FnMut() -> R) -> R {
    let pad = [0u8; N];
    black_box(&pad);
    let result = f();
    black_box(&pad);
    result
}

/// Times per request (ns) of each case, one row per case, one column per round.
struct Rounds(Vec<Vec<f64>>);

impl Rounds {
    fn new(cases: usize) -> Self {
        Self(vec![Vec::new(); cases])
    }

    fn push(&mut self, case: usize, elapsed: Duration, requests: u64) {
        self.0[case].push(elapsed.as_nanos() as f64 / requests as f64);
    }

    fn median(&self, case: usize) -> f64 {
        median(&self.0[case])
    }

    /// The median over the rounds of `f` applied to each round's times.
    fn median_of(&self, f: impl Fn(&dyn Fn(usize) -> f64) -> f64) -> f64 {
        self.median_where(|_| true, f)
    }

    /// The median over the rounds `pick` takes (by number) of `f` applied to each round's
    /// times.
    fn median_where(
        &self,
        pick: impl Fn(usize) -> bool,
        f: impl Fn(&dyn Fn(usize) -> f64) -> f64,
    ) -> f64 {
        median(
            &(0..self.0[0].len())
                .filter(|&round| pick(round))
                .map(|round| f(&|case| self.0[case][round]))
                .collect::<Vec<_>>(),
        )
    }
}

/// The current-thread cases in interleaved rounds: medians, and the median of each round's
/// ratio to the baseline.
fn print_ready_call(rt: &Runtime) {
    const REQUESTS: u64 = 1_000_000;
    // Buffer's requests cost some hundred times more: fewer of them take as long.
    const BUFFER_REQUESTS: u64 = 20_000;
    const NAMES: [&str; 6] = [
        "baseline",
        "persistent",
        "persistent_8_clones",
        "reconnect",
        "buffer",
        "minimal_wrapper",
    ];
    let mut bare = [Echo];
    let mut wrapped = [persistent(rt)];
    let mut clones: Vec<_> = (0..8).map(|_| wrapped[0].clone()).collect();
    let mut reconnect = [reconnect(rt)];
    let mut buffer = [buffer(rt)];
    let mut minimal = [minimal()];
    let mut rounds = Rounds::new(NAMES.len());
    let offset = |round: usize| STACK_OFFSETS[round % STACK_OFFSETS.len()];
    for round in 0..OFFSET_ROUNDS {
        let mut time = |case: usize, requests: u64, run: &mut dyn FnMut(u64) -> Duration| {
            let elapsed = at_stack_offset(offset(round), || run(requests));
            rounds.push(case, elapsed, requests);
        };
        time(0, REQUESTS, &mut |n| time_requests(rt, n, &mut bare));
        time(1, REQUESTS, &mut |n| time_requests(rt, n, &mut wrapped));
        time(2, REQUESTS, &mut |n| time_requests(rt, n, &mut clones));
        time(3, REQUESTS, &mut |n| time_requests(rt, n, &mut reconnect));
        time(4, BUFFER_REQUESTS, &mut |n| {
            time_requests(rt, n, &mut buffer)
        });
        time(5, REQUESTS, &mut |n| time_requests(rt, n, &mut minimal));
    }
    println!(
        "ready_call, current-thread, {OFFSET_ROUNDS} interleaved rounds \
         ({REQUESTS} requests per case and round, {BUFFER_REQUESTS} for buffer), \
         {} at each stack offset:\n  \
         case                 median ns/req   median of the rounds' ratios to baseline",
        OFFSET_ROUNDS / STACK_OFFSETS.len(),
    );
    for (case, name) in NAMES.iter().enumerate() {
        println!(
            "  {name:<20} {:10.2}      {:.3} x",
            rounds.median(case),
            rounds.median_of(|round| round(case) / round(0)),
        );
    }
    println!(
        "  by stack offset (bytes; baseline ns/req, then each case's median ratio to it):\n  \
         offset  baseline  persistent  persistent_8_clones  reconnect  minimal_wrapper"
    );
    for at in STACK_OFFSETS {
        let here = |round: usize| offset(round) == at;
        let ratio = |case: usize| rounds.median_where(here, |round| round(case) / round(0));
        println!(
            "  {at:>6} {:9.2} {:10.3} x {:18.3} x {:9.3} x {:15.3} x",
            rounds.median_where(here, |round| round(0)),
            ratio(1),
            ratio(2),
            ratio(3),
            ratio(5),
        );
    }
}

/// The contention cases in interleaved rounds: each case's median, each one's growth from 1
/// to 2 threads, and the persistent growth relative to the baseline's (per round, median).
fn print_contention(rt: &Runtime) {
    const REQUESTS: u64 = 5_000_000;
    const NAMES: [&str; 4] = [
        "baseline_1_thread",
        "baseline_2_threads",
        "persistent_1_thread",
        "persistent_2_threads",
    ];
    let wrapped = persistent(rt);
    let mut rounds = Rounds::new(NAMES.len());
    for _ in 0..ROUNDS {
        rounds.push(0, time_threads(1, REQUESTS, &Echo), REQUESTS);
        rounds.push(1, time_threads(2, REQUESTS, &Echo), REQUESTS);
        rounds.push(2, time_threads(1, REQUESTS, &wrapped), REQUESTS);
        rounds.push(3, time_threads(2, REQUESTS, &wrapped), REQUESTS);
    }
    println!(
        "contention, each thread its own current-thread runtime and clone, {ROUNDS} \
         interleaved rounds ({REQUESTS} requests per thread, case and round):\n  \
         case                 median ns/req per thread"
    );
    for (case, name) in NAMES.iter().enumerate() {
        println!("  {name:<20} {:10.2}", rounds.median(case));
    }
    let bare = rounds.median_of(|round| round(1) / round(0));
    let persistent = rounds.median_of(|round| round(3) / round(2));
    let relative = rounds.median_of(|round| (round(3) / round(2)) / (round(1) / round(0)));
    let one = rounds.median_of(|round| round(2) / round(0));
    let two = rounds.median_of(|round| round(3) / round(1));
    println!(
        "  growth from 1 to 2 threads (median of the rounds' ratios):\n    \
         baseline   {bare:.3} x\n    \
         persistent {persistent:.3} x\n    \
         persistent growth / baseline growth: {relative:.3} x\n  \
         persistent / baseline: 1 thread {one:.3} x, 2 threads {two:.3} x"
    );
}

fn main() {
    let rt = runtime();
    let mut c = Criterion::default().configure_from_args();
    bench_ready_call(&mut c, &rt);
    bench_contention(&mut c, &rt);
    c.final_summary();

    // Not in test mode (`--test`, or `cargo test --benches`, which passes no `--bench`) or
    // when listing: there the numbers would mean nothing.
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|arg| arg == flag);
    if has("--bench") && !has("--test") && !has("--list") {
        print_ready_call(&rt);
        print_contention(&rt);
    }
}
