//! Panics in user code (discovery, the maker, hooks, policies, predicates, health checks,
//! close signals) are caught where the crate calls it, and told as text: a panic there is a
//! failed attempt or a logged warning, never a dead driver.

use std::{any::Any, future::Future, panic::AssertUnwindSafe};

use futures_util::{FutureExt as _, future::CatchUnwind};

/// The text of a caught panic's payload.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Runs `f`; a panic in it is caught and returned as its text.
pub(crate) fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|panic| message(&*panic))
}

/// A user future whose panic is caught when it is polled.
pub(crate) type Guarded<F> = CatchUnwind<AssertUnwindSafe<F>>;

/// Calls user code that returns a future: a panic in the call is caught now (its text is the
/// error), one in the future when it is polled.
pub(crate) fn guarded<F: Future>(call: impl FnOnce() -> F) -> Result<Guarded<F>, String> {
    catch(call).map(|future| AssertUnwindSafe(future).catch_unwind())
}
