//! [`Executor`]: how the HTTP/2 connector runs hyper's background tasks.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use futures_util::FutureExt;

/// The executor of the tasks hyper spawns for an HTTP/2 connection (the connection itself,
/// one task per request while its response is awaited, one per request body being sent): each
/// future is boxed, then given to [`tokio::spawn`].
///
/// It is [`TokioExecutor`](https://docs.rs/hyper-util/latest/hyper_util/rt/tokio/struct.TokioExecutor.html)
/// with two differences:
///
/// - Speed: hyper's per-request futures are one enum as large as its largest variant (the
///   whole connection task), and spawning it unboxed copies that into and out of the task on
///   every request; boxed, only a pointer moves (tonic's executor does the same).
/// - The connection itself: when [`Http2Connector`](super::Http2Connector) makes a
///   connection, the connection future hyper spawns during the handshake is not spawned but
///   handed to the connector, which runs it in one task with hyper's dispatcher. Then no
///   `GOAWAY` is read between hyper opening a stream for a request and hyper checking the
///   connection after it, so hyper's `GOAWAY` error for a request proves that the server did
///   not take it (see [what is replayed](super#when-the-server-says-goodbye-what-is-replayed-what-is-not)).
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
        // `map`, not an `async` block: one awaiting a captured future holds it twice.
        let future = Box::pin(future.map(drop));
        if let Some(future) = offer(future) {
            tokio::spawn(future);
        }
    }
}

/// A future hyper would have spawned, kept by the caller of [`capturing`] instead.
pub(super) type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// While a [`capturing`] poll runs on this thread: `Some`, holding the first future
    /// spawned in it (if any yet).
    static CAPTURE: RefCell<Option<Option<Task>>> = const { RefCell::new(None) };
}

/// `future`, taken by a [`capturing`] poll in progress, or handed back to be spawned.
fn offer(future: Task) -> Option<Task> {
    CAPTURE.with(|capture| match &mut *capture.borrow_mut() {
        Some(slot @ None) => {
            *slot = Some(future);
            None
        }
        _ => Some(future),
    })
}

/// Polls `future` (hyper's HTTP/2 handshake) and keeps the first future that [`Executor`]
/// is asked to spawn during the poll: the connection future, which hyper spawns in the
/// handshake's last poll. The caller runs it.
pub(super) fn capturing<T>(
    future: Pin<&mut impl Future<Output = T>>,
    cx: &mut Context<'_>,
) -> (Poll<T>, Option<Task>) {
    CAPTURE.with(|capture| *capture.borrow_mut() = Some(None));
    // Disarmed on the way out, by unwinding too: a later spawn on this thread is spawned.
    struct Disarm;
    impl Drop for Disarm {
        fn drop(&mut self) {
            CAPTURE.with(|capture| capture.borrow_mut().take());
        }
    }
    let disarm = Disarm;
    let poll = future.poll(cx);
    let task = CAPTURE.with(|capture| capture.borrow_mut().take().flatten());
    drop(disarm);
    (poll, task)
}

#[cfg(test)]
mod tests {
    use std::{
        future::poll_fn,
        pin::pin,
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
    };

    use hyper::rt::Executor as _;

    use super::*;

    fn counting(ran: &Arc<AtomicUsize>) -> impl Future<Output = ()> + Send + 'static {
        let ran = ran.clone();
        async move {
            ran.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The first future spawned in a capturing poll is kept, not spawned; a second one in the
    /// same poll, and any outside one, is spawned.
    #[tokio::test]
    async fn a_capturing_poll_keeps_the_first_future_spawned_in_it() {
        let ran = Arc::new(AtomicUsize::new(0));
        let mut spawning = pin!(async {
            Executor::new().execute(counting(&ran));
            Executor::new().execute(counting(&ran));
        });
        let task = poll_fn(|cx| {
            let (poll, task) = capturing(spawning.as_mut(), cx);
            assert!(poll.is_ready());
            Poll::Ready(task)
        })
        .await
        .expect("the first spawned future was kept");
        Executor::new().execute(counting(&ran));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            ran.load(Ordering::SeqCst),
            2,
            "the second and the outside one ran"
        );
        task.await;
        assert_eq!(ran.load(Ordering::SeqCst), 3);
    }
}
