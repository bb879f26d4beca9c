//! [`GoAwayGate`]: keeps h2 from reading a server's `GOAWAY` while hyper's HTTP/2 dispatcher
//! runs, so that hyper's `GOAWAY` error for a request proves the server never got it.
//!
//! hyper's dispatcher (the connection future the connector spawns) takes a request from its
//! queue, has h2 open a stream for it (the `HEADERS` are queued), then checks the connection
//! again, and fails the request with the connection's error if there is one by then. h2's
//! connection (a task of its own) sets that error when it reads a `GOAWAY`. Should it read one
//! between those two steps, the request fails with the same `GOAWAY` error that a request h2
//! refused to open gets, though its stream is open and its `HEADERS` go out; the server may
//! process it, and sending it again would process it twice. (Seen: about one request in a
//! thousand caught in a server's two-step `GOAWAY`.)
//!
//! The gate excludes the two: a dispatcher poll does not start while a `GOAWAY` is being
//! handed to h2, and a `GOAWAY` is not handed to h2 while a dispatcher poll runs. The read
//! side ([`FrameWatch`](super::sniff::FrameWatch)) sees the `GOAWAY`'s bytes before h2 does;
//! it closes the gate before passing them on, and opens it at h2's next read (h2 reads more
//! only once it has handled every whole frame it holds) or when the connection is dropped.
//! Both tasks keep running apart: a dispatcher poll costs two atomic operations, a read a
//! flag test; the read side waits only for a dispatcher poll in progress when a `GOAWAY`
//! arrives.
//!
//! The end of the stream (or a read error) sets h2's connection error too, and the read side
//! closes the gate around it the same way, until h2's next read or write (see
//! [`FrameWatch`](super::sniff::FrameWatch)): a request the dispatcher would have taken then
//! stays in hyper's queue, and hyper hands it back when the connection stops.
//!
//! Its atomics come from [`crate::sync`], so a loom model (`loom_tests`, "the GOAWAY gate")
//! checks every interleaving of dispatcher polls with a hand-over.

use std::{
    future::{Future, poll_fn},
    pin::pin,
    sync::Arc,
    task::{Context, Poll},
};

// loom's under `cfg(loom)`: `loom_tests` checks the gate's every interleaving.
use crate::sync::{AtomicU8, AtomicWaker, Ordering::SeqCst, yield_now};

/// A dispatcher poll is running.
const DISPATCHING: u8 = 1;
/// A `GOAWAY` is being handed to h2 (or waits for the dispatcher poll to end).
const DELIVERING: u8 = 2;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct GoAwayGate {
    state: AtomicU8,
    /// The dispatcher, waiting for a `GOAWAY` to be handed over.
    dispatcher: AtomicWaker,
}

impl GoAwayGate {
    /// Polls the dispatcher with `poll`, unless a `GOAWAY` is being handed to h2: then
    /// `Pending`, and woken once it has been.
    pub(crate) fn dispatch<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        while self.state.fetch_or(DISPATCHING, SeqCst) & DELIVERING != 0 {
            self.state.fetch_and(!DISPATCHING, SeqCst);
            self.dispatcher.register(cx.waker());
            // Registered first, then checked: a hand-over that ends after the check wakes.
            if self.state.load(SeqCst) & DELIVERING != 0 {
                return Poll::Pending;
            }
        }
        let result = poll(cx);
        self.state.fetch_and(!DISPATCHING, SeqCst);
        result
    }

    /// `dispatcher` (hyper's HTTP/2 connection future), polled through [`dispatch`](Self::dispatch).
    pub(crate) async fn dispatching<F: Future>(self: Arc<Self>, dispatcher: F) -> F::Output {
        let mut dispatcher = pin!(dispatcher);
        poll_fn(|cx| self.dispatch(cx, |cx| dispatcher.as_mut().poll(cx))).await
    }

    /// The read side is about to hand a `GOAWAY` to h2: closes the gate, and waits for a
    /// dispatcher poll in progress (on another thread; it takes microseconds) to end.
    pub(crate) fn deliver(&self) {
        let mut state = self.state.fetch_or(DELIVERING, SeqCst);
        while state & DISPATCHING != 0 {
            yield_now();
            state = self.state.load(SeqCst);
        }
    }

    /// h2 has handled the `GOAWAY` (or the connection is gone): opens the gate.
    pub(crate) fn delivered(&self) {
        if self.state.fetch_and(!DELIVERING, SeqCst) & DELIVERING != 0 {
            self.dispatcher.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
            mpsc,
        },
        task::Waker,
        thread,
        time::{Duration, Instant},
    };

    use super::*;

    /// A waker that records whether it was woken.
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flag() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        (flag.clone(), Waker::from(flag))
    }

    /// While a `GOAWAY` is being handed over, the dispatcher is not polled; it is woken when
    /// the hand-over ends, and polled then.
    #[test]
    fn the_dispatcher_waits_for_a_goaway_being_handed_over() {
        let gate = GoAwayGate::default();
        let (woken, waker) = flag();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        assert_eq!(
            gate.dispatch(&mut cx, |_| {
                polls += 1;
                Poll::Ready(())
            }),
            Poll::Ready(())
        );
        gate.deliver();
        assert_eq!(
            gate.dispatch(&mut cx, |_| {
                polls += 1;
                Poll::Ready(())
            }),
            Poll::Pending
        );
        assert_eq!(polls, 1, "not polled while the GOAWAY is handed over");
        assert!(!woken.0.load(Ordering::SeqCst));
        gate.delivered();
        assert!(woken.0.load(Ordering::SeqCst), "woken when it has been");
        assert_eq!(
            gate.dispatch(&mut cx, |_| {
                polls += 1;
                Poll::Ready(())
            }),
            Poll::Ready(())
        );
        assert_eq!(polls, 2);
    }

    /// A `GOAWAY` arriving while a dispatcher poll runs (on another thread) is handed over
    /// only after that poll has ended.
    #[test]
    fn a_goaway_waits_for_the_dispatcher_poll_in_progress() {
        let gate = Arc::new(GoAwayGate::default());
        let (in_poll, entered) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let ended = Arc::new(AtomicBool::new(false));
        let dispatcher = thread::spawn({
            let (gate, ended) = (gate.clone(), ended.clone());
            move || {
                let (_, waker) = flag();
                let mut cx = Context::from_waker(&waker);
                gate.dispatch(&mut cx, |_| {
                    in_poll.send(()).unwrap();
                    released.recv().unwrap();
                    ended.store(true, Ordering::SeqCst);
                    Poll::Ready(())
                })
            }
        });
        entered.recv().unwrap();
        let reader = thread::spawn({
            let (gate, ended) = (gate.clone(), ended.clone());
            move || {
                gate.deliver();
                ended.load(Ordering::SeqCst)
            }
        });
        // Once the reader has closed the gate, the poll ends.
        let deadline = Instant::now() + Duration::from_secs(10);
        while gate.state.load(SeqCst) & DELIVERING == 0 {
            assert!(Instant::now() < deadline, "the reader never came");
            thread::yield_now();
        }
        release.send(()).unwrap();
        assert_eq!(dispatcher.join().unwrap(), Poll::Ready(()));
        assert!(
            reader.join().unwrap(),
            "handed over only after the poll ended"
        );
    }
}
