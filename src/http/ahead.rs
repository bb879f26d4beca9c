//! Dialing ahead of a server's request limit: a server that says goodbye after a fixed number
//! of requests on each connection (nginx's `keepalive_requests`, 1000 by default; Envoy's
//! `max_requests_per_connection`) tells the number in each `GOAWAY` (its last stream id).
//! Once two connections in a row ended at the same count, the connector dials the next
//! connection when three quarters of the count have been answered on the current one, and the
//! layer's next attempt takes it ready: the goodbye costs no handshake. At the count itself
//! the connection retires (takes no new request), so no request is sent past the limit only
//! to be refused and sent again; if the server then does not say goodbye, the limit is
//! forgotten and learned again.
//!
//! Nothing is dialed ahead for a server whose goodbyes come at varying counts (reloads,
//! restarts, a maximum connection age).

use std::{
    future::Future,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::oneshot;

use crate::BoxError;

/// How long a dial ahead may take before it is given up (it runs in a task of its own, so it
/// is bounded by itself; the layer's connect timeout bounds the attempt that waits for it).
const DIAL_BOUND: Duration = Duration::from_secs(30);

/// The largest stream id (31 bits).
const MAX_STREAM_ID: u32 = 0x7fff_ffff;

/// A connector's knowledge of its server's request limit, and its connection dialed ahead.
pub(crate) struct Ahead<C> {
    /// The streams the server took on the last two connections it ended with a `GOAWAY`
    /// naming its last stream (0: none yet).
    taken: Mutex<[u32; 2]>,
    spare: Mutex<Option<Spare<C>>>,
}

/// A connection dialed ahead, to the address with this authority: ready, or on its way.
struct Spare<C> {
    authority: String,
    ready: oneshot::Receiver<Result<C, BoxError>>,
}

impl<C> Ahead<C> {
    pub(crate) fn new() -> Self {
        Self {
            taken: Mutex::new([0; 2]),
            spare: Mutex::new(None),
        }
    }

    /// Records a `GOAWAY` (`NO_ERROR`) whose last stream id is `last_stream_id`. A 0 (nothing
    /// taken) or the maximum (the first step of a two-step shutdown) says nothing of a limit.
    pub(crate) fn record_goodbye(&self, last_stream_id: u32) {
        if last_stream_id == 0 || last_stream_id >= MAX_STREAM_ID {
            return;
        }
        // Client streams are odd: the n-th is 2n - 1.
        let streams = last_stream_id.div_ceil(2);
        let mut taken = lock(&self.taken);
        *taken = [taken[1], streams];
    }
}

impl<C: Send + 'static> Ahead<C> {
    /// The server's request limit: the count at which the last two connections in a row
    /// ended; `None` before, or when they differ.
    pub(crate) fn limit(&self) -> Option<u32> {
        let [before, last] = *lock(&self.taken);
        (before == last && last > 0).then_some(last)
    }

    /// The request whose sending starts the dial ahead on a new connection: the one at half
    /// the [`limit`](Self::limit) (counted in requests sent, not answered: with many requests
    /// in flight, the answers run far behind, and a dial started by an answer came too late,
    /// after the connection had retired).
    pub(crate) fn threshold(&self) -> Option<u32> {
        self.limit().map(|limit| limit.div_ceil(2))
    }

    /// The server did not say goodbye at the limit (it was raised, or there is none any
    /// more): it is learned again from the next goodbyes.
    pub(crate) fn forget(&self) {
        *lock(&self.taken) = [0; 2];
    }

    /// Starts `dial` in a task of its own, as the spare for `authority` (a spare dialed before
    /// is dropped, and with it its connection).
    pub(crate) fn dial(
        &self,
        authority: String,
        dial: impl Future<Output = Result<C, BoxError>> + Send + 'static,
    ) {
        let (done, ready) = oneshot::channel();
        tokio::spawn(async move {
            let result = tokio::time::timeout(DIAL_BOUND, dial)
                .await
                .unwrap_or_else(|_| Err(format!("no connection within {DIAL_BOUND:?}").into()));
            // Nobody waits for it any more: the connection is dropped, and closes.
            let _ = done.send(result);
        });
        *lock(&self.spare) = Some(Spare { authority, ready });
    }

    /// Takes the spare for `authority`, if there is one (it may still be on its way). A spare
    /// for another authority is dropped: the client is moving elsewhere.
    pub(crate) fn take(&self, authority: &str) -> Option<oneshot::Receiver<Result<C, BoxError>>> {
        let spare = lock(&self.spare).take()?;
        (spare.authority == authority).then_some(spare.ready)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_is_known_after_two_goodbyes_at_the_same_count() {
        let ahead = Ahead::<()>::new();
        assert_eq!(ahead.threshold(), None);
        ahead.record_goodbye(399); // 200 streams
        assert_eq!(ahead.threshold(), None, "one goodbye is no limit");
        ahead.record_goodbye(399);
        // Half of 200: the 100th request.
        assert_eq!(ahead.threshold(), Some(100));
        ahead.record_goodbye(401);
        assert_eq!(ahead.threshold(), None, "the count changed");
        ahead.record_goodbye(401);
        assert_eq!(ahead.limit(), Some(201));
        assert_eq!(ahead.threshold(), Some(101));
        ahead.forget();
        assert_eq!(ahead.limit(), None);
    }

    #[test]
    fn goodbyes_that_name_no_stream_are_no_limit() {
        let ahead = Ahead::<()>::new();
        for last_stream_id in [0, MAX_STREAM_ID, 0, MAX_STREAM_ID] {
            ahead.record_goodbye(last_stream_id);
        }
        assert_eq!(ahead.threshold(), None);
    }

    #[test]
    fn a_limit_of_one_request_dials_at_the_first_request() {
        let ahead = Ahead::<()>::new();
        ahead.record_goodbye(1);
        ahead.record_goodbye(1);
        assert_eq!(ahead.threshold(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_spare_goes_to_its_authority_only() {
        let ahead = Ahead::<u32>::new();
        ahead.dial("a:1".into(), async { Ok(7) });
        assert!(ahead.take("b:2").is_none());
        assert!(ahead.take("a:1").is_none(), "the spare for a:1 was dropped");
        ahead.dial("a:1".into(), async { Ok(8) });
        let ready = ahead.take("a:1").expect("a spare");
        assert_eq!(ready.await.unwrap().unwrap(), 8);
        assert!(ahead.take("a:1").is_none(), "taken once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dial_that_hangs_is_given_up() {
        let ahead = Ahead::<u32>::new();
        ahead.dial("a:1".into(), std::future::pending());
        let ready = ahead.take("a:1").expect("a spare");
        let error = ready.await.unwrap().unwrap_err();
        assert!(
            error.to_string().contains("no connection within"),
            "{error}"
        );
    }
}
