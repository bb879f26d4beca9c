//! The synchronisation primitives the shared readiness state is built on.
//!
//! Plain `std` in normal builds; `loom`'s model-checked equivalents under `cfg(loom)`, so the
//! readiness protocol in [`crate::shared`] and the HTTP/2 connector's `GOAWAY` gate can be
//! checked exhaustively.

#[cfg(loom)]
pub(crate) use loom::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

// What the HTTP/2 connector's `GOAWAY` gate (`http::gate`) is built on.
#[cfg(all(feature = "hyper", not(loom)))]
pub(crate) use futures_util::task::AtomicWaker;
#[cfg(all(feature = "hyper", loom))]
pub(crate) use loom::{sync::atomic::AtomicU8, thread::yield_now};
#[cfg(all(feature = "hyper", not(loom)))]
pub(crate) use std::{sync::atomic::AtomicU8, thread::yield_now};

/// futures-util's `AtomicWaker` in normal builds. Under `cfg(loom)`, a stand-in over loom's
/// `Mutex` with the same `register` and `wake` (loom's own needs its `futures` feature): the
/// models check the protocols built on it, not futures-util's lock-free slot.
#[cfg(all(feature = "hyper", loom))]
#[derive(Debug, Default)]
pub(crate) struct AtomicWaker(Mutex<Option<std::task::Waker>>);

#[cfg(all(feature = "hyper", loom))]
impl AtomicWaker {
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        *lock(&self.0) = Some(waker.clone());
    }

    pub(crate) fn wake(&self) {
        let waker = lock(&self.0).take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Locks `mutex`, ignoring poisoning: every critical section in this crate leaves the data
/// consistent before anything in it can panic (user code never runs under these locks).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
