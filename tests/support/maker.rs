//! A scripted maker whose connections the test can kill or make busy, and a scripted address
//! source. Everything here runs under `tokio::time::pause()`.

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

use persistent_connection::close::CloseReason;
use tokio::{sync::watch, time::Instant};
use tower::Service;

pub type Addr = &'static str;

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
