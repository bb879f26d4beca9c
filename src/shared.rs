//! The state that every clone of the service, every [`Handle`](crate::Handle) and the driver
//! share.
//!
//! One atomic word says what there is (`generation << 2 | status`) and is the only shared
//! thing the hot path touches: a clone compares it with the word it saw when it took its local
//! copy of the connection, and as long as they are equal it uses that copy without any lock.
//! Everything else sits behind mutexes that are only taken when the word changes (at most
//! twice per connection), when a caller must wait, and by the handle.
//!
//! The protocol that makes waiting free of lost wake-ups:
//! - every change is made under the `current` lock, the word stored with `Release`, and then
//!   [`Shared::wake_all`] wakes every registered waker (it never removes them);
//! - a waiter stores its waker first, then loads the word again, and only returns `Pending`
//!   when the word is still the one it decided on.
//!
//! So either the waiter's store comes before `wake_all`'s read of the slots (it is woken), or
//! the change comes before the waiter's second load (it sees the new word). Each waiter owns
//! one slot, overwritten on every registration and freed on drop: waiting never grows a list.

use std::{fmt, task::Waker};

use slab::Slab;

use crate::{
    error::ConnectError,
    state::State,
    stats::{Ending, RequestCounters, Stats},
    sync::{AtomicBool, AtomicU64, Mutex, Ordering, lock},
};

// === Word ===

const STATUS_MASK: u64 = 0b11;
const DISCONNECTED: u64 = 0;
const CONNECTED: u64 = 1;
const CLOSED: u64 = 2;

/// A snapshot of the shared state word: a generation and a status.
///
/// The generation increases with every change, so two equal words mean "nothing happened in
/// between". A connection is identified by the word under which it was published.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word(u64);

impl Word {
    /// A word that the shared state never holds: what a clone has "seen" before its first poll.
    pub(crate) const UNSEEN: Self = Self(u64::MAX);

    fn next(self, status: u64) -> Self {
        Self(((self.0 >> 2) + 1) << 2 | status)
    }

    pub(crate) fn generation(self) -> u64 {
        self.0 >> 2
    }

    pub(crate) fn is_connected(self) -> bool {
        self.0 & STATUS_MASK == CONNECTED
    }

    pub(crate) fn is_closed(self) -> bool {
        self.0 & STATUS_MASK == CLOSED
    }
}

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.0 & STATUS_MASK {
            CONNECTED => "connected",
            CLOSED => "closed",
            _ => "disconnected",
        };
        write!(f, "{status}@{}", self.generation())
    }
}

// === Shared ===

/// The counters behind [`Stats`], and the outcome of the latest finished attempt.
#[derive(Default)]
struct Counters {
    started: u64,
    finished: u64,
    failed: u64,
    connections: u64,
    disconnections: u64,
    /// Whether the latest finished attempt failed (with `last_error`).
    latest_failed: bool,
    last_error: Option<ConnectError>,
    connected_at: Option<tokio::time::Instant>,
    next_delay: Option<std::time::Duration>,
    consecutive_failures: u32,
    /// Why the driver closed by itself: the error it gave up with.
    gave_up: Option<ConnectError>,
    graceful_closes: u64,
    rotations: u64,
}

pub(crate) struct Shared<S> {
    word: AtomicU64,
    /// The current connection: `Some` exactly while `word` is connected.
    current: Mutex<Option<S>>,
    /// One slot per waiting party (service clone or handle future).
    waiters: Mutex<Slab<Option<Waker>>>,
    /// Set by the driver's drop guard once the driver task has ended.
    ended: AtomicBool,
    counters: Mutex<Counters>,
    /// What the driver is doing, for handles.
    state: tokio::sync::watch::Sender<State>,
    pub(crate) server_name: std::sync::Arc<str>,
    /// What the connector counts of its requests (replays, refusals), for [`Stats`].
    requests: std::sync::Arc<RequestCounters>,
}

impl<S> Shared<S> {
    pub(crate) fn new(server_name: std::sync::Arc<str>) -> Self {
        Self {
            word: AtomicU64::new(DISCONNECTED),
            current: Mutex::new(None),
            waiters: Mutex::new(Slab::new()),
            ended: AtomicBool::new(false),
            counters: Mutex::new(Counters::default()),
            state: tokio::sync::watch::Sender::new(State::Connecting),
            server_name,
            requests: std::sync::Arc::default(),
        }
    }

    /// Reads the request counters from `requests` (a connector's) instead of its own.
    pub(crate) fn with_request_counters(
        mut self,
        requests: Option<std::sync::Arc<RequestCounters>>,
    ) -> Self {
        if let Some(requests) = requests {
            self.requests = requests;
        }
        self
    }

    /// The current word: the one atomic load of the hot path.
    #[inline]
    pub(crate) fn load(&self) -> Word {
        Word(self.word.load(Ordering::Acquire))
    }

    /// Makes `conn` the current connection. Returns its word, or `None` (dropping `conn`) if
    /// the state is already closed: nothing is published after close.
    pub(crate) fn publish(&self, conn: S) -> Option<Word> {
        let word = {
            let mut current = lock(&self.current);
            let old = self.load();
            if old.is_closed() {
                return None;
            }
            let word = old.next(CONNECTED);
            *current = Some(conn);
            self.word.store(word.0, Ordering::Release);
            word
        };
        self.wake_all();
        Some(word)
    }

    /// Withdraws the connection published as `word`, if it is still the current one, and
    /// returns it so the caller drops it outside the lock.
    pub(crate) fn withdraw(&self, word: Word) -> Option<S> {
        let conn = {
            let mut current = lock(&self.current);
            if !word.is_connected() || self.load() != word {
                return None;
            }
            self.word
                .store(word.next(DISCONNECTED).0, Ordering::Release);
            current.take()
        };
        self.wake_all();
        conn
    }

    /// Turns the state closed for good and returns the shared copy of the connection (to be
    /// dropped by the caller). Returns `false` if it was closed already.
    pub(crate) fn close(&self) -> (bool, Option<S>) {
        let (first, conn) = {
            let mut current = lock(&self.current);
            let old = self.load();
            if old.is_closed() {
                (false, None)
            } else {
                self.word.store(old.next(CLOSED).0, Ordering::Release);
                (true, current.take())
            }
        };
        self.state.send_replace(State::Closed);
        self.wake_all();
        (first, conn)
    }

    /// Marks the driver as ended (after [`close`](Self::close)) and wakes everyone.
    pub(crate) fn set_ended(&self) {
        self.ended.store(true, Ordering::Release);
        self.wake_all();
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Records the start of an attempt, with the delay armed before it and the failures in a
    /// row so far.
    pub(crate) fn start_attempt(&self, delay: std::time::Duration, consecutive_failures: u32) {
        crate::metrics::attempt_started(&self.server_name, delay);
        let mut counters = lock(&self.counters);
        counters.started += 1;
        counters.next_delay = Some(delay);
        counters.consecutive_failures = consecutive_failures;
    }

    /// Records the outcome of a finished attempt (`None` for success), and the failures in a
    /// row the driver counts after it. A failure wakes
    /// everyone (a `connected_or_failed_to_connect` waiter wants it); a success does not, as
    /// the [`publish`](Self::publish) that follows it wakes everyone anyway.
    pub(crate) fn finish_attempt(&self, error: Option<ConnectError>, consecutive_failures: u32) {
        let failed = error.is_some();
        crate::metrics::attempt_finished(&self.server_name, error.as_ref());
        {
            let mut counters = lock(&self.counters);
            counters.finished += 1;
            counters.latest_failed = failed;
            counters.consecutive_failures = consecutive_failures;
            if let Some(error) = error {
                counters.failed += 1;
                counters.last_error = Some(error);
            } else {
                counters.connections += 1;
                counters.connected_at = Some(tokio::time::Instant::now());
            }
        }
        if failed {
            self.wake_all();
        }
    }

    /// Records the end of the connection, and the failures in a row it leaves.
    pub(crate) fn disconnected(&self, consecutive_failures: u32, ending: Ending) {
        crate::metrics::disconnected(&self.server_name, ending);
        let mut counters = lock(&self.counters);
        counters.disconnections += 1;
        match ending {
            Ending::Goodbye => counters.graceful_closes += 1,
            Ending::Rotation => counters.rotations += 1,
            Ending::Failure => {}
        }
        counters.connected_at = None;
        counters.consecutive_failures = consecutive_failures;
    }

    /// Records that the retry policy gave up with `error`, before the driver closes.
    pub(crate) fn give_up(&self, error: ConnectError) {
        lock(&self.counters).gave_up = Some(error);
    }

    /// The error the driver gave up with, if it did.
    pub(crate) fn gave_up(&self) -> Option<ConnectError> {
        lock(&self.counters).gave_up.clone()
    }

    /// How many attempts have finished, and the error of the latest one if it failed.
    pub(crate) fn attempts(&self) -> (u64, Option<ConnectError>) {
        let counters = lock(&self.counters);
        let latest = counters.latest_failed.then(|| counters.last_error.clone());
        (counters.finished, latest.flatten())
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        let (replayed_requests, refused_requests) = self.requests.read();
        let counters = lock(&self.counters);
        Stats {
            attempts: counters.started,
            failed_attempts: counters.failed,
            connections: counters.connections,
            disconnections: counters.disconnections,
            connected_for: counters.connected_at.map(|at| at.elapsed()),
            last_error: counters.last_error.clone(),
            next_delay: counters.next_delay,
            consecutive_failures: counters.consecutive_failures,
            graceful_closes: counters.graceful_closes,
            rotations: counters.rotations,
            replayed_requests,
            refused_requests,
        }
    }

    /// Publishes what the driver is doing; returns whether that changed the state. Nothing
    /// replaces `Closed`.
    pub(crate) fn set_state(&self, new: State) -> bool {
        self.state.send_if_modified(|state| {
            let changed = *state != new && *state != State::Closed;
            if changed {
                *state = new;
            }
            changed
        })
    }

    pub(crate) fn state(&self) -> State {
        *self.state.borrow()
    }

    pub(crate) fn watch_state(&self) -> tokio::sync::watch::Receiver<State> {
        self.state.subscribe()
    }

    /// Stores `waker` in `slot` (allocating the slot on first use).
    pub(crate) fn register(&self, slot: &mut Option<usize>, waker: &Waker) {
        let mut waiters = lock(&self.waiters);
        match slot.and_then(|key| waiters.get_mut(key)) {
            Some(entry) => match entry {
                Some(old) if old.will_wake(waker) => {}
                _ => *entry = Some(waker.clone()),
            },
            None => *slot = Some(waiters.insert(Some(waker.clone()))),
        }
    }

    /// Frees a slot allocated by [`register`](Self::register).
    pub(crate) fn deregister(&self, slot: usize) {
        lock(&self.waiters).try_remove(slot);
    }

    /// Wakes every registered waker. Wakers stay registered (each party overwrites its own
    /// slot on its next registration), and are woken outside the lock.
    fn wake_all(&self) {
        let wakers: Vec<Waker> = lock(&self.waiters)
            .iter()
            .filter_map(|(_, waker)| waker.clone())
            .collect();
        for waker in wakers {
            waker.wake();
        }
    }

    #[cfg(test)]
    pub(crate) fn waiter_slots(&self) -> usize {
        lock(&self.waiters).len()
    }
}

impl<S: Clone> Shared<S> {
    /// The current word and, if connected, a copy of the connection, read consistently.
    pub(crate) fn current(&self) -> (Word, Option<S>) {
        let current = lock(&self.current);
        // Every store of the word happens under this lock, so it cannot change while held.
        (self.load(), current.clone())
    }
}

impl<S> fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("word", &Word(self.word.load(Ordering::Acquire)))
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

// === WaiterSlot ===

/// One party's registration with [`Shared`]: a slot key, and the waker last stored in it so
/// that re-registering the same waker takes no lock.
pub(crate) struct WaiterSlot {
    key: Option<usize>,
    last: Option<Waker>,
}

impl WaiterSlot {
    pub(crate) const fn new() -> Self {
        Self {
            key: None,
            last: None,
        }
    }

    /// Makes sure `waker` is woken on the next change of `shared`.
    #[inline]
    pub(crate) fn register<S>(&mut self, shared: &Shared<S>, waker: &Waker) {
        // Our slot is only ever written by us and never emptied by `wake_all`, so if we stored
        // this same waker before, it is still there.
        if self.last.as_ref().is_some_and(|last| last.will_wake(waker)) {
            return;
        }
        shared.register(&mut self.key, waker);
        self.last = Some(waker.clone());
    }

    /// Frees the slot; call from the owner's `Drop`.
    pub(crate) fn release<S>(&mut self, shared: &Shared<S>) {
        if let Some(key) = self.key.take() {
            shared.deregister(key);
        }
        self.last = None;
    }
}

impl fmt::Debug for WaiterSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaiterSlot")
            .field("key", &self.key)
            .finish()
    }
}

#[cfg(test)]
impl<S> Shared<S> {
    /// Locks both mutexes a service clone may take, `current` then `waiters` (nothing else
    /// holds both at once, so this cannot deadlock), for a test that holds them while it checks
    /// that the hot path never waits for either.
    pub(crate) fn lock_current_and_waiters(
        &self,
    ) -> (
        crate::sync::MutexGuard<'_, Option<S>>,
        crate::sync::MutexGuard<'_, Slab<Option<Waker>>>,
    ) {
        (lock(&self.current), lock(&self.waiters))
    }
}
