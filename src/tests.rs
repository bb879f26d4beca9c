//! Unit tests that need private access: the waiter slots and the hot path.
//!
//! The shared state is private to the service; these tests reach it through a test-only
//! accessor (see [`start`]).

// std threads and a Tokio runtime, not loom's model.
#![cfg(not(loom))]

use std::{
    convert::Infallible,
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    task::{Context, Poll, Wake, Waker},
    thread,
    time::Duration,
};

use tower::{Layer, Service, ServiceExt, service_fn};

use crate::{BoxError, Handle, service::PersistentConnection, shared::Shared, sync::Arc};

// === helpers ===

#[path = "../tests/support/echo.rs"]
mod echo;
use echo::Echo;

/// The retry delay of the drivers started by [`start`] (no jitter).
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Applies `PersistentConnectionLayer::fixed_address("addr").retry_delay(|| RETRY_DELAY)
/// .jitter(0.0)` to `maker`, and also returns the shared state, which the service keeps to
/// itself. Must be called within a Tokio runtime.
fn start<M>(maker: M) -> (Arc<Shared<M::Response>>, PersistentConnection<M::Response>)
where
    M: Service<&'static str> + Send + 'static,
    M::Response: Clone + Send + 'static,
    M::Error: Into<BoxError>,
    M::Future: Send + 'static,
{
    let service = crate::PersistentConnectionLayer::fixed_address("addr")
        .retry_delay(|| RETRY_DELAY)
        .jitter(0.0)
        .layer(maker);
    (service.shared().clone(), service)
}

/// A maker whose every connection is an [`Echo`].
fn echo_maker()
-> impl Service<&'static str, Response = Echo, Error = Infallible, Future: Send> + Send + 'static {
    service_fn(|_: &'static str| async { Ok::<_, Infallible>(Echo) })
}

/// Runs `n` times `poll_ready` (which must be `Ready(Ok)`), `call(i)` and the response future
/// to completion, with a no-op waker; returns the sum of the responses.
fn ready_call(svc: &mut PersistentConnection<Echo>, n: u64) -> u64 {
    let mut cx = Context::from_waker(Waker::noop());
    let mut sum = 0;
    for i in 0..n {
        match svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => {}
            other => panic!("poll_ready on a connected service returned {other:?}"),
        }
        match pin!(svc.call(i)).poll(&mut cx) {
            Poll::Ready(Ok(response)) => sum += response,
            other => panic!("the response of an always-ready connection was {other:?}"),
        }
    }
    sum
}

/// The sum `ready_call(svc, n)` returns: `1 + 2 + ... + n`.
fn echo_sum(n: u64) -> u64 {
    n * (n + 1) / 2
}

/// Another thread holding both mutexes of a shared state until released (or dropped).
struct LockHolder {
    release: mpsc::Sender<()>,
    thread: thread::JoinHandle<()>,
}

impl LockHolder {
    /// Returns once the other thread holds both locks.
    fn lock<S: Send + 'static>(shared: &Arc<Shared<S>>) -> Self {
        let shared = shared.clone();
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let thread = thread::spawn(move || {
            let guards = shared.lock_current_and_waiters();
            locked_tx.send(()).unwrap();
            // Until `release()`, or until the holder is dropped (a failing test).
            let _ = release_rx.recv();
            drop(guards);
        });
        locked_rx.recv().expect("the lock holder thread died");
        Self { release, thread }
    }

    fn release(self) {
        self.release.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// Long enough for any amount of lock-free work below, short enough to fail fast.
const GUARD: Duration = Duration::from_secs(5);

/// A waker that counts its wake-ups; each one is a distinct waker.
#[derive(Default)]
struct Flag(AtomicUsize);

impl Flag {
    fn waker() -> (std::sync::Arc<Self>, Waker) {
        let flag = std::sync::Arc::new(Self::default());
        let waker = Waker::from(flag.clone());
        (flag, waker)
    }

    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Wake for Flag {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Polls `svc.poll_ready` once with `waker`, expecting `Pending`.
fn assert_pending_with<S, Req>(svc: &mut PersistentConnection<S>, waker: &Waker)
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    let poll = svc.poll_ready(&mut Context::from_waker(waker));
    assert!(poll.is_pending(), "poll_ready during an outage: {poll:?}");
}

/// Polls `future` once with a fresh waker, expecting `Pending`.
fn assert_future_pending<F: Future>(future: std::pin::Pin<&mut F>) {
    let (_, waker) = Flag::waker();
    let poll = future.poll(&mut Context::from_waker(&waker));
    assert!(
        poll.is_pending(),
        "a handle future resolved during an outage"
    );
}

// === the hot path ===

/// While another thread holds both mutexes of the shared state, a connected service still
/// completes 1,000 `poll_ready` + `call` rounds: the hot path takes no lock.
#[test]
fn hot_path_takes_no_lock() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (shared, mut svc) = rt.block_on(async {
        let (shared, mut svc) = start(echo_maker());
        svc.ready().await.unwrap();
        (shared, svc)
    });

    let holder = LockHolder::lock(&shared);
    let (done_tx, done_rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let sum = ready_call(&mut svc, 1_000);
        done_tx.send(sum).unwrap();
        svc
    });
    let outcome = done_rx.recv_timeout(GUARD);
    // Release before asserting, so a blocked worker finishes and nothing hangs.
    holder.release();
    let svc = worker.join().unwrap();
    let sum = outcome.expect("the hot path waited for a lock held by another thread");
    assert_eq!(sum, echo_sum(1_000));
    drop(svc);
}

/// Control for `hot_path_takes_no_lock`: a fresh clone's first `poll_ready` (the slow path,
/// which reads the connection under the `current` lock) does wait while another thread holds
/// the locks, and completes once they are released.
#[test]
fn first_poll_of_a_fresh_clone_waits_for_the_lock() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (shared, mut fresh) = rt.block_on(async {
        let (shared, mut svc) = start(echo_maker());
        // Cloned before any poll: it has seen no connection yet.
        let fresh = svc.clone();
        svc.ready().await.unwrap();
        (shared, fresh)
    });
    assert!(shared.load().is_connected());

    let holder = LockHolder::lock(&shared);
    let (done_tx, done_rx) = mpsc::channel();
    let worker = thread::spawn(move || {
        let sum = ready_call(&mut fresh, 1);
        done_tx.send(sum).unwrap();
        fresh
    });
    let while_held = done_rx.recv_timeout(Duration::from_millis(200));
    holder.release();
    let after_release = done_rx.recv_timeout(GUARD);
    let fresh = worker.join().unwrap();
    assert_eq!(
        while_held,
        Err(mpsc::RecvTimeoutError::Timeout),
        "the slow path did not wait for the lock"
    );
    assert_eq!(after_release, Ok(echo_sum(1)));
    drop(fresh);
}

// === waiter slots (DESIGN 2(d)) ===

/// During an outage each clone and each handle future owns one waiter slot, replaced (not
/// added to) on every poll with a new waker and freed on drop: polling on every request never
/// grows the list.
#[tokio::test(start_paused = true)]
async fn waiter_slots_do_not_grow() {
    let attempts = std::sync::Arc::new(AtomicUsize::new(0));
    let maker = service_fn({
        let attempts = attempts.clone();
        move |_: &'static str| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err::<Echo, _>(std::io::Error::other("refused")) }
        }
    });
    let (shared, mut svc) = start(maker);
    assert_eq!(shared.waiter_slots(), 0);

    // One clone polled 1,000 times, each time with a new waker, while attempts keep failing.
    let (first, first_waker) = Flag::waker();
    assert_pending_with::<Echo, u64>(&mut svc, &first_waker);
    let mut last = first.clone();
    for i in 1..1_000 {
        let (flag, waker) = Flag::waker();
        assert_pending_with::<Echo, u64>(&mut svc, &waker);
        assert_eq!(shared.waiter_slots(), 1, "after poll {i}");
        last = flag;
        if i % 100 == 0 {
            tokio::time::sleep(RETRY_DELAY).await;
        }
    }
    assert!(
        attempts.load(Ordering::SeqCst) >= 5,
        "attempts kept failing while the clone was polled: {attempts:?}"
    );
    // The slot holds the latest waker only: the next failure wakes it, not the first one.
    let (first_before, last_before) = (first.count(), last.count());
    tokio::time::sleep(RETRY_DELAY).await;
    assert_eq!(first.count(), first_before, "a replaced waker was woken");
    assert!(last.count() > last_before, "the latest waker was not woken");

    // Ten clones, each polled with several wakers: one slot each.
    let mut clones: Vec<_> = (0..10).map(|_| svc.clone()).collect();
    for clone in &mut clones {
        for _ in 0..10 {
            let (_, waker) = Flag::waker();
            assert_pending_with::<Echo, u64>(clone, &waker);
        }
    }
    assert_eq!(shared.waiter_slots(), 1 + 10);
    drop(clones);
    assert_eq!(shared.waiter_slots(), 1);

    // Handle futures: one slot each while pending, freed when dropped.
    let handle: Handle<Echo> = svc.handle();
    let mut connected = Box::pin(handle.connected());
    let mut closed = Box::pin(handle.closed());
    for _ in 0..100 {
        assert_future_pending(connected.as_mut());
        assert_future_pending(closed.as_mut());
    }
    assert_eq!(shared.waiter_slots(), 1 + 2);
    drop(connected);
    drop(closed);
    assert_eq!(shared.waiter_slots(), 1);

    drop(svc);
    assert_eq!(shared.waiter_slots(), 0);
}

// === the state word ===

/// Every change of the shared state gets a strictly higher generation; withdrawing a
/// connection by an older word changes nothing; once closed, nothing is published and the
/// word no longer changes.
#[test]
fn word_generations_increase_and_close_is_final() {
    // The strong count of `conn` tells whether the shared state holds a copy.
    let conn = std::sync::Arc::new(());
    let held = || std::sync::Arc::strong_count(&conn) - 1;
    let shared = Shared::new("unit".into());

    let start = shared.load();
    assert!(!start.is_connected() && !start.is_closed());

    let first = shared.publish(conn.clone()).expect("publish before close");
    assert!(first.is_connected());
    assert!(first.generation() > start.generation());
    assert_eq!(shared.load(), first);
    assert_eq!(held(), 1);

    let withdrawn = shared.withdraw(first);
    assert!(withdrawn.is_some(), "the current connection is withdrawn");
    drop(withdrawn);
    let gone = shared.load();
    assert!(!gone.is_connected() && !gone.is_closed());
    assert!(gone.generation() > first.generation());
    assert_eq!(held(), 0);

    // Withdrawing by the same (now older) word does nothing.
    assert!(shared.withdraw(first).is_none());
    assert_eq!(shared.load(), gone);

    let second = shared.publish(conn.clone()).expect("publish before close");
    assert!(second.generation() > gone.generation());
    // An older word does not withdraw the newer connection.
    assert!(shared.withdraw(first).is_none());
    assert_eq!(shared.load(), second);
    assert_eq!(held(), 1);

    let (first_close, copy) = shared.close();
    assert!(first_close);
    assert!(copy.is_some(), "close hands back the shared copy");
    drop(copy);
    let closed = shared.load();
    assert!(closed.is_closed() && !closed.is_connected());
    assert!(closed.generation() > second.generation());
    assert_eq!(held(), 0);

    // After close: nothing is published, withdrawn or closed again.
    assert!(shared.publish(conn.clone()).is_none());
    assert_eq!(held(), 0, "a connection published after close is dropped");
    assert!(shared.withdraw(second).is_none());
    assert!(
        shared.withdraw(closed).is_none(),
        "withdrawing by the closed word itself does not reopen"
    );
    assert!(matches!(shared.close(), (false, None)));
    assert_eq!(shared.load(), closed);
    assert!(shared.current().1.is_none());
}
