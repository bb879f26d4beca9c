//! Loom models of the shared readiness state ([`Shared`]) and of the protocol the service
//! follows over it (`PersistentConnection::poll_ready`), and of the HTTP/2 connector's
//! `GOAWAY` gate (`http::gate`).
//!
//! Built only with `--cfg loom` on this crate, when [`crate::sync`] is loom's, so every atomic
//! and mutex of [`Shared`] is model-checked: loom runs each model under the interleavings of
//! its threads its partial-order reduction tells apart (all of them, or up to a preemption
//! bound), and fails on a failed assertion or a deadlock. A
//! clone waits with [`block_on`], which parks its loom thread until its waker is woken: a lost
//! wake-up leaves it parked forever, and loom reports the deadlock.
//!
//! The models drive the real service, not a copy of its protocol: a clone is a
//! `PersistentConnection` over a `Shared` the model made, and the model thread playing the
//! driver calls `publish`, `withdraw` and `close` as the driver and the handle do.
//!
//! Run with `--cfg loom` on this crate only (`RUSTFLAGS="--cfg loom"` would also reach Tokio,
//! which then leaves out `tokio::net`, and hyper-util no longer builds), through a rustc
//! wrapper that cargo applies to workspace members only:
//!
//! ```text
//! printf '#!/bin/sh\nexec "$@" --cfg loom\n' > /tmp/rustc-loom && chmod +x /tmp/rustc-loom
//! RUSTC_WORKSPACE_WRAPPER=/tmp/rustc-loom CARGO_TARGET_DIR=target/loom \
//!     cargo test --lib --release loom_tests
//! ```
//!
//! A deadlock (a lost wake-up) aborts the test binary right after loom's `deadlock; threads =
//! [...]` report, because dropping loom objects while unwinding from it panics again; run one
//! model at a time (`-- --exact loom_tests::<name>`) to see the others. `LOOM_MAX_PREEMPTIONS`
//! overrides every model's preemption bound, e.g. for a deeper run by hand.

use std::{
    future::{Future, Ready, poll_fn, ready},
    pin::pin,
    task::{Context, Poll, Wake, Waker},
};

use loom::{
    sync::{
        Notify,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tower_service::Service;

use crate::{
    BoxError, Closed,
    command::Command,
    service::PersistentConnection,
    shared::{Shared, Word},
    sync::Arc,
};

// === helpers ===

/// The preemption bound of the larger models, whose exhaustive exploration would take from
/// twenty seconds to minutes: within it each finishes in well under a second.
const PREEMPTION_BOUND: usize = 3;

/// Checks `f` under every interleaving loom explores with at most `preemption_bound`
/// preemptions per execution (`None`: all of them). `LOOM_MAX_PREEMPTIONS`, when set,
/// overrides the bound of every model.
fn model(preemption_bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = preemption_bound;
    }
    builder.check(f);
}

/// Checks every interleaving of `f` (models with two threads).
fn exhaustive(f: impl Fn() + Sync + Send + 'static) {
    model(None, f);
}

/// Checks the interleavings of `f` within [`PREEMPTION_BOUND`].
fn bounded(f: impl Fn() + Sync + Send + 'static) {
    model(Some(PREEMPTION_BOUND), f);
}

/// A waker that unparks the loom thread waiting in [`block_on`].
struct Unpark(Notify);

impl Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.notify();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.notify();
    }
}

/// Polls `future` until it is ready, parking this loom thread while it is `Pending` until its
/// waker is woken (loom's own `block_on` needs its `futures` feature). A parked thread that
/// nobody wakes is a deadlock for loom. Loom may also wake it spuriously, to check that a
/// spurious poll is harmless.
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let unpark = std::sync::Arc::new(Unpark(Notify::new()));
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        unpark.0.wait();
    }
}

const READY: usize = 0;
/// `poll_ready` is `Pending` and registers no waker, as hyper's HTTP/2 `SendRequest` does
/// while its connection is busy.
const BUSY: usize = 1;
/// `poll_ready` fails: the connection is dead.
const DEAD: usize = 2;

/// A connection: an id (the order in which the driver publishes it), and a state that
/// decides its `poll_ready`. Copies share the state, so the state's strong count says how many
/// copies are alive.
#[derive(Clone, Debug)]
struct Conn {
    id: u64,
    state: Arc<AtomicUsize>,
}

impl Conn {
    fn new(id: u64, state: usize) -> Self {
        Self {
            id,
            state: Arc::new(AtomicUsize::new(state)),
        }
    }

    /// How many copies of this connection exist, this one included.
    fn copies(&self) -> usize {
        Arc::strong_count(&self.state)
    }
}

impl Service<()> for Conn {
    type Response = u64;
    type Error = BoxError;
    type Future = Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self.state.load(Ordering::Acquire) {
            READY => Poll::Ready(Ok(())),
            BUSY => Poll::Pending,
            _ => Poll::Ready(Err(format!("connection {} is dead", self.id).into())),
        }
    }

    fn call(&mut self, (): ()) -> Self::Future {
        ready(Ok(self.id))
    }
}

/// A fresh shared state.
fn new_shared() -> Arc<Shared<Conn>> {
    Arc::new(Shared::new("model".into()))
}

/// A service clone over `shared`, and the inbox where its failure reports arrive.
fn clone_of(
    shared: &Arc<Shared<Conn>>,
) -> (PersistentConnection<Conn>, UnboundedReceiver<Command>) {
    let (commands, inbox) = unbounded_channel();
    let svc = PersistentConnection::new(shared.clone(), commands);
    assert!(Arc::ptr_eq(svc.shared(), shared));
    (svc, inbox)
}

/// Waits (parking this loom thread) until `svc.poll_ready` is `Ready`; returns the id of the
/// connection it is ready with, or its error.
fn ready_id(svc: &mut PersistentConnection<Conn>) -> Result<u64, BoxError> {
    block_on(poll_fn(|cx| svc.poll_ready(cx)))?;
    Ok(svc
        .get_ref()
        .expect("poll_ready was Ready(Ok) without a connection")
        .id)
}

/// Waits until `svc` is ready, and returns the connection's id; panics on `Closed`.
fn connected_id(svc: &mut PersistentConnection<Conn>) -> u64 {
    ready_id(svc).expect("poll_ready failed before close")
}

/// The generations of the words the driver sequence `publish(1)`, `withdraw`, `publish(2)`,
/// `close` produces, in order: the word under which each connection is current.
const GEN_CONN_1: u64 = 1;
const GEN_WITHDRAWN: u64 = 2;
const GEN_CONN_2: u64 = 3;
const GEN_CLOSED: u64 = 4;

/// Asserts that `(word, connection)`, read together from the state the sequence above is
/// applied to, pair each word with its own connection and nothing else.
fn assert_consistent(word: Word, connection: Option<&Conn>) {
    let id = connection.map(|c| c.id);
    match word.generation() {
        0 => assert_eq!((word.is_connected(), id), (false, None), "{word:?}"),
        GEN_CONN_1 => assert_eq!((word.is_connected(), id), (true, Some(1)), "{word:?}"),
        GEN_WITHDRAWN => assert_eq!((word.is_connected(), id), (false, None), "{word:?}"),
        GEN_CONN_2 => assert_eq!((word.is_connected(), id), (true, Some(2)), "{word:?}"),
        GEN_CLOSED => assert_eq!((word.is_closed(), id), (true, None), "{word:?}"),
        other => panic!("unexpected generation {other} ({word:?})"),
    }
}

// === no lost wake-up ===

/// No lost wake-up: two clones waiting for the first connection both get it, whatever the
/// interleaving of their check, waker registration and re-check with the publish; and each
/// frees its waiter slot when dropped.
#[test]
fn waiting_clones_are_woken_by_the_publish() {
    bounded(|| {
        let shared = new_shared();
        let clones: Vec<_> = (0..2)
            .map(|_| {
                let (mut svc, _inbox) = clone_of(&shared);
                thread::spawn(move || connected_id(&mut svc))
            })
            .collect();

        assert!(shared.publish(Conn::new(1, READY)).is_some());

        for clone in clones {
            assert_eq!(clone.join().unwrap(), 1);
        }
        assert_eq!(shared.waiter_slots(), 0, "a dropped clone kept its slot");
    });
}

/// No lost wake-up across a gap: a clone that comes while the first connection is being
/// withdrawn and the second published is woken by whichever change it missed, and ends up with
/// the second connection (never stuck with, or back to, the withdrawn one).
#[test]
fn a_clone_waiting_through_a_withdraw_gets_the_next_connection() {
    bounded(|| {
        let shared = new_shared();
        let (mut svc, _inbox) = clone_of(&shared);
        let clone = thread::spawn(move || connected_id(&mut svc));

        let first = shared.publish(Conn::new(1, BUSY)).unwrap();
        drop(shared.withdraw(first));
        shared.publish(Conn::new(2, READY)).unwrap();

        // Connection 1 never becomes ready: only connection 2 can end the wait.
        assert_eq!(clone.join().unwrap(), 2);
    });
}

/// No lost wake-up behind a busy connection: a clone whose connection is `Pending` without
/// registering a waker (hyper's HTTP/2 does that) still waits on the shared state, so the
/// withdraw of that connection and the publish of the next one wake it.
#[test]
fn a_clone_waiting_on_a_busy_connection_is_woken_by_the_next_one() {
    exhaustive(|| {
        let shared = new_shared();
        let first = shared.publish(Conn::new(1, BUSY)).unwrap();
        let (mut svc, _inbox) = clone_of(&shared);
        let clone = thread::spawn(move || connected_id(&mut svc));

        drop(shared.withdraw(first));
        shared.publish(Conn::new(2, READY)).unwrap();

        assert_eq!(clone.join().unwrap(), 2);
    });
}

/// A clone waiting on a busy connection lets go of its copy as soon as the driver withdraws
/// that connection, even when nothing else happens after: the withdraw alone wakes it.
#[test]
fn a_clone_waiting_on_a_busy_connection_lets_go_of_it_when_it_is_withdrawn() {
    exhaustive(|| {
        let shared = new_shared();
        let conn = Conn::new(1, BUSY);
        let first = shared.publish(conn.clone()).unwrap();
        let (mut svc, _inbox) = clone_of(&shared);
        let clone = thread::spawn(move || {
            block_on(poll_fn(|cx| match svc.poll_ready(cx) {
                Poll::Ready(ready) => panic!("ready with a busy connection: {ready:?}"),
                Poll::Pending if svc.get_ref().is_some() => Poll::Pending,
                Poll::Pending => Poll::Ready(()),
            }));
            // Still alive, and without a copy.
            svc
        });

        drop(shared.withdraw(first));

        let svc = clone.join().unwrap();
        assert_eq!(conn.copies(), 1, "a copy outlived the withdraw");
        drop(svc);
    });
}

/// A clone waiting on a busy connection gets `Closed`, and lets go of its copy, when the
/// state closes: the close alone wakes it.
#[test]
fn a_clone_waiting_on_a_busy_connection_gets_closed() {
    exhaustive(|| {
        let shared = new_shared();
        let conn = Conn::new(1, BUSY);
        shared.publish(conn.clone()).unwrap();
        let (mut svc, _inbox) = clone_of(&shared);
        let clone = thread::spawn(move || {
            let closed = ready_id(&mut svc).map_err(|e| e.is::<Closed>());
            (closed, svc)
        });

        let (closed_first, taken) = shared.close();
        assert!(closed_first);
        drop(taken);

        let (closed, svc) = clone.join().unwrap();
        assert_eq!(closed, Err(true));
        assert_eq!(conn.copies(), 1, "a copy outlived the close");
        drop(svc);
    });
}

/// A clone whose connection fails reports it under that connection's word (so the driver's
/// `withdraw` hits that connection, never a newer one), never takes it again, and is woken by
/// the next connection.
#[test]
fn a_clone_whose_connection_failed_reports_it_and_waits_for_the_next() {
    exhaustive(|| {
        let shared = new_shared();
        let first = shared.publish(Conn::new(1, DEAD)).unwrap();
        let (mut svc, mut inbox) = clone_of(&shared);
        let clone = thread::spawn(move || {
            let id = connected_id(&mut svc);
            // The clone's inbox outlives it: its reports can be read after the join.
            drop(svc);
            id
        });

        // The driver, told (or not yet) that connection 1 failed, replaces it.
        drop(shared.withdraw(first));
        shared.publish(Conn::new(2, READY)).unwrap();

        assert_eq!(clone.join().unwrap(), 2);
        while let Ok(command) = inbox.try_recv() {
            match command {
                Command::Failed { word, .. } => assert_eq!(word, first, "misattributed failure"),
                _ => panic!("a clone sent something other than a failure report"),
            }
        }
    });
}

// === consistency, no double delivery ===

/// `current()` pairs every word with its own connection while the driver publishes,
/// withdraws, publishes again and closes: a withdrawn connection never shows under a later
/// word, nothing shows after close, and one reader sees the generations only increase.
#[test]
fn current_pairs_every_word_with_its_own_connection() {
    exhaustive(|| {
        let shared = new_shared();
        let reader = {
            let shared = shared.clone();
            thread::spawn(move || {
                let (first, connection) = shared.current();
                assert_consistent(first, connection.as_ref());
                // Lets the driver move on between the two reads.
                thread::yield_now();
                let (second, connection) = shared.current();
                assert_consistent(second, connection.as_ref());
                assert!(second.generation() >= first.generation());
            })
        };

        let first = shared.publish(Conn::new(1, READY)).unwrap();
        drop(shared.withdraw(first));
        shared.publish(Conn::new(2, READY)).unwrap();
        let (closed_first, _) = shared.close();
        assert!(closed_first);

        reader.join().unwrap();
        let (word, connection) = shared.current();
        assert_consistent(word, connection.as_ref());
        assert_eq!(word.generation(), GEN_CLOSED);
    });
}

/// No double delivery: when the driver's `withdraw` races a handle's `close`, exactly one of
/// them gets the connection back (to drop it), and no copy is left in the shared state.
#[test]
fn a_withdraw_racing_a_close_gets_the_connection_back_exactly_once() {
    exhaustive(|| {
        let shared = new_shared();
        let conn = Conn::new(1, READY);
        let word = shared.publish(conn.clone()).unwrap();
        let closer = {
            let shared = shared.clone();
            thread::spawn(move || shared.close())
        };

        let withdrawn = shared.withdraw(word);
        let (closed_first, closed) = closer.join().unwrap();

        assert!(closed_first);
        let returned = withdrawn.iter().chain(&closed).count();
        assert_eq!(returned, 1, "withdraw: {withdrawn:?}, close: {closed:?}");
        drop((withdrawn, closed));
        assert_eq!(conn.copies(), 1, "a copy stayed in the shared state");
        assert!(shared.load().is_closed());
    });
}

/// Nothing is published after close: when the driver's `publish` races a handle's `close`,
/// either the publish is refused (and its connection never reaches anyone) or the close takes
/// it back; a waiting clone ends with that connection or `Closed`, never waits forever, and no
/// copy outlives the clone.
#[test]
fn a_publish_racing_a_close_never_outlives_the_close() {
    bounded(|| {
        let shared = new_shared();
        let conn = Conn::new(1, READY);
        let (mut svc, _inbox) = clone_of(&shared);
        let clone = thread::spawn(move || {
            let id = ready_id(&mut svc).map_err(|e| e.is::<Closed>());
            // A clone that saw the close holds no connection.
            if id.is_err() {
                assert!(svc.get_ref().is_none());
            }
            id
        });
        let closer = {
            let shared = shared.clone();
            thread::spawn(move || shared.close())
        };

        let published = shared.publish(conn.clone());
        let (closed_first, closed) = closer.join().unwrap();
        let seen = clone.join().unwrap();

        assert!(closed_first);
        match published {
            Some(_) => assert_eq!(closed.map(|c| c.id), Some(1), "close left it behind"),
            None => {
                assert!(closed.is_none());
                assert_eq!(seen, Err(true), "a refused connection reached a clone");
            }
        }
        assert!(matches!(seen, Ok(1) | Err(true)), "{seen:?}");
        assert!(shared.publish(Conn::new(2, READY)).is_none());
        let (word, connection) = shared.current();
        assert!(word.is_closed() && connection.is_none());
        assert_eq!(conn.copies(), 1, "a copy outlived the close");
    });
}

// === monotonic ===

/// The generation of the word under which the driver sequence `publish(1)`, `withdraw`,
/// `publish(2)` publishes connection `id`.
fn published_at(id: u64) -> u64 {
    match id {
        1 => GEN_CONN_1,
        2 => GEN_CONN_2,
        _ => panic!("no connection {id}"),
    }
}

/// A clone never goes back: once a clone has seen a word (by being ready with its connection,
/// or by loading it), neither it nor a clone made from it is ever ready with a connection
/// published under an older word, while the driver replaces the first connection with a
/// second.
#[test]
fn a_clone_never_goes_back_to_an_older_connection() {
    exhaustive(|| {
        let shared = new_shared();
        let (mut svc, _inbox) = clone_of(&shared);
        let clone = thread::spawn(move || {
            let first = published_at(connected_id(&mut svc));
            // Lets the driver move on here too: loom's partial-order reduction does not always
            // try the driver's stores before a load the clone made first.
            thread::yield_now();
            let seen = svc.shared().load().generation().max(first);
            let mut copy = svc.clone();
            let second = published_at(connected_id(&mut svc));
            let from_copy = published_at(connected_id(&mut copy));
            assert!(
                second >= seen,
                "the clone went back from {seen} to {second}"
            );
            assert!(
                from_copy >= seen,
                "the copy went back from {seen} to {from_copy}"
            );
        });

        let first = shared.publish(Conn::new(1, READY)).unwrap();
        drop(shared.withdraw(first));
        shared.publish(Conn::new(2, READY)).unwrap();

        clone.join().unwrap();
    });
}

// === the hot path ===

/// The hot path takes no lock: a clone that is ready with the current connection stays ready
/// while another thread holds both of the shared state's mutexes (if it waited for either,
/// the holder, which waits for the clone, would deadlock with it).
#[test]
fn the_hot_path_takes_no_lock() {
    exhaustive(|| {
        let shared = new_shared();
        shared.publish(Conn::new(1, READY)).unwrap();
        let (mut svc, _inbox) = clone_of(&shared);
        assert_eq!(connected_id(&mut svc), 1);

        let locked = Arc::new(AtomicUsize::new(0));
        let holder = {
            let (shared, locked) = (shared.clone(), locked.clone());
            thread::spawn(move || {
                let guards = shared.lock_current_and_waiters();
                locked.store(1, Ordering::Release);
                while locked.load(Ordering::Acquire) != 2 {
                    thread::yield_now();
                }
                drop(guards);
            })
        };

        while locked.load(Ordering::Acquire) != 1 {
            thread::yield_now();
        }
        let polled = svc.poll_ready(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(polled, Poll::Ready(Ok(()))), "{polled:?}");
        locked.store(2, Ordering::Release);
        holder.join().unwrap();
    });
}

// === the HTTP/2 connector's GOAWAY gate ===

/// The gate's promise (`http::gate`): a `GOAWAY` is not handed to h2 while a poll of hyper's
/// dispatcher runs, and no dispatcher poll starts while one is being handed over; and a
/// dispatcher kept out is woken once the hand-over is done (else it waits for ever: a deadlock
/// for loom). The read side hands over one `GOAWAY`; the dispatcher polls three times (it
/// asks to be polled again after the first two), so that a poll can meet the hand-over at
/// every point of it.
#[cfg(feature = "hyper")]
#[test]
fn the_goaway_gate_keeps_dispatcher_polls_and_a_goaway_hand_over_apart() {
    use crate::{http::GoAwayGate, sync::AtomicBool};

    exhaustive(|| {
        let gate = std::sync::Arc::new(GoAwayGate::default());
        // Set while the dispatcher's poll runs, and while the GOAWAY is with h2.
        let polling = Arc::new(AtomicBool::new(false));
        let handing = Arc::new(AtomicBool::new(false));

        let reader = {
            let (gate, polling, handing) = (gate.clone(), polling.clone(), handing.clone());
            thread::spawn(move || {
                gate.deliver();
                handing.store(true, Ordering::SeqCst);
                assert!(
                    !polling.load(Ordering::SeqCst),
                    "a GOAWAY handed to h2 during a dispatcher poll"
                );
                handing.store(false, Ordering::SeqCst);
                gate.delivered();
            })
        };

        let mut polls = 0;
        block_on(poll_fn(|cx| {
            gate.dispatch(cx, |cx| {
                polling.store(true, Ordering::SeqCst);
                assert!(
                    !handing.load(Ordering::SeqCst),
                    "a dispatcher poll while a GOAWAY was handed to h2"
                );
                polling.store(false, Ordering::SeqCst);
                polls += 1;
                if polls == 3 {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            })
        }));
        reader.join().unwrap();
    });
}
