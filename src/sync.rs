//! The synchronisation primitives the shared readiness state is built on.
//!
//! Plain `std` in normal builds; `loom`'s model-checked equivalents under `cfg(loom)`, so the
//! readiness protocol in [`crate::shared`] can be checked exhaustively.

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

/// Locks `mutex`, ignoring poisoning: every critical section in this crate leaves the data
/// consistent before anything in it can panic (user code never runs under these locks).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
