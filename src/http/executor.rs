//! [`Executor`]: how the HTTP/2 connector runs hyper's background tasks.

use std::future::Future;

/// The executor of the tasks hyper spawns for an HTTP/2 connection (the connection itself,
/// one task per request while its response is awaited, one per request body being sent): each
/// future is boxed, then given to [`tokio::spawn`].
///
/// It is [`TokioExecutor`](https://docs.rs/hyper-util/latest/hyper_util/rt/tokio/struct.TokioExecutor.html)
/// with one difference that matters for speed: hyper's per-request futures are one enum as
/// large as its largest variant (the whole connection task), and spawning it unboxed copies
/// that into and out of the task on every request; boxed, only a pointer moves (tonic's
/// executor does the same).
///
/// It is the executor of [`Http2Connector::builder_mut`](super::Http2Connector::builder_mut)'s
/// builder.
#[derive(Clone, Copy, Debug, Default)]
#[non_exhaustive]
pub struct Executor;

impl Executor {
    /// The executor: spawns on the current Tokio runtime.
    pub fn new() -> Self {
        Self
    }
}

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}
