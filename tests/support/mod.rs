//! Test support: a scripted maker whose connections the test can kill, an event recorder,
//! and tracing set-up. Everything here runs under `tokio::time::pause()`.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::VecDeque,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use persistent_connection::{Event, close::CloseReason};
use tokio::{sync::watch, time::Instant};
use tower::Service;

pub type Addr = &'static str;

/// Installs a `tracing` subscriber once (output only shown for failing tests).
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "persistent_connection=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

// === Plan ===

/// What the maker does for one attempt.
#[derive(Clone, Debug)]
pub enum Plan {
    /// Fail at once with this message.
    Fail(&'static str),
    /// Fail with this message after this long.
    FailAfter(Duration, &'static str),
    /// Connect at once.
    Connect,
    /// Connect after this long.
    ConnectAfter(Duration),
    /// Never finish.
    Hang,
    /// Panic in the maker's future.
    Panic,
}

// === Maker ===

/// A maker that follows a script of [`Plan`]s (then repeats `fallback`), records each
/// attempt's time and address, and hands out [`Conn`]s.
#[derive(Clone)]
pub struct Maker {
    state: Arc<Mutex<MakerState>>,
    pub live: Arc<AtomicUsize>,
    pub in_flight: Arc<AtomicUsize>,
    start: Instant,
}

struct MakerState {
    plans: VecDeque<Plan>,
    fallback: Plan,
    attempts: Vec<(Duration, Addr)>,
    connections: Vec<std::sync::Weak<ConnInner>>,
}

impl Maker {
    pub fn new(plans: impl IntoIterator<Item = Plan>, fallback: Plan) -> Self {
        Self {
            state: Arc::new(Mutex::new(MakerState {
                plans: plans.into_iter().collect(),
                fallback,
                attempts: Vec::new(),
                connections: Vec::new(),
            })),
            live: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            start: Instant::now(),
        }
    }

    /// A maker that always connects at once.
    pub fn always_connect() -> Self {
        Self::new([], Plan::Connect)
    }

    /// Times (since the maker was made) of every attempt so far.
    pub fn attempt_times(&self) -> Vec<Duration> {
        self.state
            .lock()
            .unwrap()
            .attempts
            .iter()
            .map(|a| a.0)
            .collect()
    }

    /// Addresses of every attempt so far.
    pub fn attempt_addrs(&self) -> Vec<Addr> {
        self.state
            .lock()
            .unwrap()
            .attempts
            .iter()
            .map(|a| a.1)
            .collect()
    }

    pub fn attempts(&self) -> usize {
        self.state.lock().unwrap().attempts.len()
    }

    /// The `n`th connection made (0-based).
    ///
    /// # Panics
    ///
    /// If that connection has been dropped everywhere (the maker keeps no strong copy, so
    /// that tests can see connections being dropped).
    pub fn conn(&self, n: usize) -> Conn {
        let inner = self.state.lock().unwrap().connections[n]
            .upgrade()
            .expect("connection already dropped");
        Conn { inner }
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections.len()
    }

    /// Adds plans to the script.
    pub fn push(&self, plans: impl IntoIterator<Item = Plan>) {
        self.state.lock().unwrap().plans.extend(plans);
    }

    pub fn set_fallback(&self, plan: Plan) {
        self.state.lock().unwrap().fallback = plan;
    }
}

/// Decrements a counter when dropped: tells the test a maker future was dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Service<Addr> for Maker {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, addr: Addr) -> Self::Future {
        let plan = {
            let mut state = self.state.lock().unwrap();
            state.attempts.push((self.start.elapsed(), addr));
            let fallback = state.fallback.clone();
            state.plans.pop_front().unwrap_or(fallback)
        };
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(self.in_flight.clone());
        let this = self.clone();
        Box::pin(async move {
            let _in_flight = in_flight;
            let fail = |msg: &str| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    msg,
                ))
            };
            match plan {
                Plan::Fail(msg) => fail(msg),
                Plan::FailAfter(after, msg) => {
                    tokio::time::sleep(after).await;
                    fail(msg)
                }
                Plan::Connect => Ok(this.new_conn(addr)),
                Plan::ConnectAfter(after) => {
                    tokio::time::sleep(after).await;
                    Ok(this.new_conn(addr))
                }
                Plan::Hang => std::future::pending().await,
                Plan::Panic => panic!("maker exploded"),
            }
        })
    }
}

impl Maker {
    fn new_conn(&self, addr: Addr) -> Conn {
        let mut state = self.state.lock().unwrap();
        let conn = Conn::new(state.connections.len(), addr, self.live.clone());
        state.connections.push(Arc::downgrade(&conn.inner));
        conn
    }
}

// === Conn ===

/// A connection: a `Service<String>` answering `"{id}:{req}"`, that the test can kill (its
/// `poll_ready` then fails and its close signal fires) or make busy (`poll_ready` Pending).
#[derive(Clone)]
pub struct Conn {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    id: usize,
    addr: Addr,
    dead: AtomicBool,
    busy: AtomicBool,
    /// Registers no waker when busy, like hyper's HTTP/2 `SendRequest`.
    silent: AtomicBool,
    closed: watch::Sender<bool>,
    /// Whether the close signal reports a graceful close.
    graceful: Arc<AtomicBool>,
    /// Whether that graceful close comes before serving anything.
    unserved: Arc<AtomicBool>,
    calls: AtomicUsize,
    polls: AtomicUsize,
    live: Arc<AtomicUsize>,
    waker: Mutex<Option<std::task::Waker>>,
}

impl Drop for ConnInner {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Conn {
    fn new(id: usize, addr: Addr, live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::SeqCst);
        Self {
            inner: Arc::new(ConnInner {
                id,
                addr,
                dead: AtomicBool::new(false),
                busy: AtomicBool::new(false),
                silent: AtomicBool::new(false),
                closed: watch::Sender::new(false),
                graceful: Arc::new(AtomicBool::new(false)),
                unserved: Arc::new(AtomicBool::new(false)),
                calls: AtomicUsize::new(0),
                polls: AtomicUsize::new(0),
                live,
                waker: Mutex::new(None),
            }),
        }
    }

    pub fn id(&self) -> usize {
        self.inner.id
    }

    pub fn addr(&self) -> Addr {
        self.inner.addr
    }

    /// Marks the connection dead: `poll_ready` fails from now on. Fires no close signal.
    pub fn fail(&self) {
        self.inner.dead.store(true, Ordering::SeqCst);
        self.wake();
    }

    /// Marks the connection dead and fires its close signal, as an error close.
    pub fn kill(&self) {
        self.fail();
        self.inner.graceful.store(false, Ordering::SeqCst);
        self.inner.closed.send_replace(true);
    }

    /// Marks the connection dead and fires its close signal, as a graceful close after
    /// serving (the server's goodbye, `CloseReason::Graceful`).
    pub fn close_gracefully(&self) {
        self.fail();
        self.inner.graceful.store(true, Ordering::SeqCst);
        self.inner.closed.send_replace(true);
    }

    /// Marks the connection dead and fires its close signal, as a goodbye before serving
    /// anything (`CloseReason::GracefulBeforeServing`: accept-then-close, `GOAWAY` before the
    /// first response).
    pub fn close_gracefully_before_serving(&self) {
        self.fail();
        self.inner.graceful.store(true, Ordering::SeqCst);
        self.inner.unserved.store(true, Ordering::SeqCst);
        self.inner.closed.send_replace(true);
    }

    /// Makes `poll_ready` Pending (registering a waker unless `silent`).
    pub fn set_busy(&self, busy: bool) {
        self.inner.busy.store(busy, Ordering::SeqCst);
        if !busy {
            self.wake();
        }
    }

    pub fn set_silent(&self, silent: bool) {
        self.inner.silent.store(silent, Ordering::SeqCst);
    }

    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    pub fn polls(&self) -> usize {
        self.inner.polls.load(Ordering::SeqCst)
    }

    /// Strong count of this connection's shared state (copies alive, plus this one).
    pub fn copies(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// The close-signal future for this connection (for `close_signal`).
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + use<> {
        let mut rx = self.inner.closed.subscribe();
        let graceful = self.inner.graceful.clone();
        let unserved = self.inner.unserved.clone();
        async move {
            let _ = rx.wait_for(|closed| *closed).await;
            if unserved.load(Ordering::SeqCst) {
                CloseReason::GracefulBeforeServing
            } else if graceful.load(Ordering::SeqCst) {
                CloseReason::Graceful
            } else {
                CloseReason::Error("connection killed".into())
            }
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.inner.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

impl Service<String> for Conn {
    type Response = String;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<String, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.polls.fetch_add(1, Ordering::SeqCst);
        if self.inner.dead.load(Ordering::SeqCst) {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("connection {} is dead", self.inner.id),
            )));
        }
        if self.inner.busy.load(Ordering::SeqCst) {
            if !self.inner.silent.load(Ordering::SeqCst) {
                *self.inner.waker.lock().unwrap() = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: String) -> Self::Future {
        self.inner.calls.fetch_add(1, Ordering::SeqCst);
        let result = if self.inner.dead.load(Ordering::SeqCst) {
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("connection {} is dead", self.inner.id),
            ))
        } else {
            Ok(format!("{}:{req}", self.inner.id))
        };
        Box::pin(async move { result })
    }
}

// === Events ===

/// Records events as short strings with their time since the recorder was made:
/// `"Attempting"`, `"Address(a)"`, `"Failed(text)"`, `"Connected(id)"`, `"Disconnected"`.
#[derive(Clone)]
pub struct Events {
    log: Arc<Mutex<Vec<(Duration, String)>>>,
    start: Instant,
}

impl Events {
    pub fn new() -> Self {
        Self {
            log: Arc::new(Mutex::new(Vec::new())),
            start: Instant::now(),
        }
    }

    /// The hook to pass to `on_event`.
    pub fn hook(&self) -> impl Fn(&Event<Addr, Conn>) + Send + Sync + 'static {
        self.hook_with(Conn::id)
    }

    /// The hook for any connection type: `id` reads a connection's id.
    pub fn hook_with<S: 'static>(
        &self,
        id: fn(&S) -> usize,
    ) -> impl Fn(&Event<Addr, S>) + Send + Sync + 'static {
        let this = self.clone();
        move |event: &Event<Addr, S>| {
            let text = match event {
                Event::AttemptingToConnect => "Attempting".to_string(),
                Event::ObtainedAddress(a) => format!("Address({a})"),
                Event::FailedToConnect(e) => format!("Failed({e})"),
                Event::Connected(c) => format!("Connected({})", id(c)),
                Event::Disconnected => "Disconnected".to_string(),
                other => other.name().to_string(),
            };
            this.log.lock().unwrap().push((this.start.elapsed(), text));
        }
    }

    /// The event texts so far.
    pub fn names(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.1.clone())
            .collect()
    }

    /// The events so far with their times.
    pub fn timed(&self) -> Vec<(Duration, String)> {
        self.log.lock().unwrap().clone()
    }

    /// The events so far with their times in whole seconds.
    pub fn timed_secs(&self) -> Vec<(u64, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(t, e)| (t.as_secs(), e.clone()))
            .collect()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

/// A `get_address` that returns the addresses of `list` in turn (repeating the last), and
/// counts calls.
pub fn addresses(
    list: &'static [Addr],
    calls: Arc<AtomicUsize>,
) -> impl Fn() -> std::future::Ready<Result<Addr, Infallible>> + Send + Sync + 'static {
    move || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(list[n.min(list.len() - 1)]))
    }
}

/// Lets the driver (and any other task) run until everything is idle, without moving the
/// paused clock.
pub async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Awaits `future` for at most an hour of (paused) time; panics naming `what` if it is still
/// pending then.
///
/// The timer is polled first: when the hour has passed, the test fails even if the future
/// would be ready on one more poll. So a future that misses a wake-up (it is ready, but nobody
/// woke its task) fails the test instead of passing an hour late, which a future-first select
/// would hide.
pub async fn within_an_hour<F: Future>(what: &str, future: F) -> F::Output {
    tokio::select! {
        biased;
        () = tokio::time::sleep(Duration::from_secs(3600)) => {
            panic!("{what} is still pending after an hour")
        }
        output = future => output,
    }
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
