//! One attempt's steps: user code (discovery, the maker, the health check, the close signal)
//! run guarded against panics and bounded by the attempt's deadline, and the [`Dialer`] that
//! owns what connecting needs, so an attempt can run beside the driver (a rotation's).

use std::{
    future::{Future, poll_fn},
    time::Duration,
};

use tokio::time::{Instant, timeout_at};
use tower_service::Service;

use super::erased::{BoxFuture, Check, Maker, Signal};
use crate::{
    close::CloseReason,
    error::ConnectError,
    health::NotServing,
    panic::{self, Guarded, guarded},
};

/// The result of a whole attempt run as one future (a rotation's, started while serving): the
/// maker handed back, and the address with the new connection, or the failure.
pub(super) type AttemptOutput<A, S> = (Maker<A, S>, Result<(A, Connection<S>), ConnectError>);

/// A whole attempt as one future, owning the maker while it runs.
pub(super) type AttemptFuture<A, S> = BoxFuture<AttemptOutput<A, S>>;

/// A new connection and the future of its close signal (a panic in it is caught).
pub(super) struct Connection<S> {
    pub(super) service: S,
    pub(super) closed: Guarded<BoxFuture<CloseReason>>,
}

/// Runs one step of an attempt, user code that returns a future (`call`, called now), until
/// `deadline`: a panic (in the call or its future) and the deadline are failed attempts, like
/// the step's own error, which `error` maps. `step` names it in a timeout's message ("in
/// address discovery").
pub(super) fn bounded<T, E, F>(
    deadline: Instant,
    timeout: Duration,
    step: &'static str,
    call: impl FnOnce() -> F,
    error: impl FnOnce(E) -> ConnectError,
) -> impl Future<Output = Result<T, ConnectError>>
where
    F: Future<Output = Result<T, E>>,
{
    let future = guarded(call);
    async move {
        let future = future.map_err(|panic| ConnectError::panic(&panic))?;
        match timeout_at(deadline, future).await {
            Err(_elapsed) => Err(ConnectError::timeout(timeout, step)),
            Ok(Err(panic)) => Err(ConnectError::panic(&panic::message(&*panic))),
            Ok(Ok(result)) => result.map_err(error),
        }
    }
}

/// What connecting needs besides the maker, owned, so an attempt can run beside the driver.
pub(super) struct Dialer<S> {
    pub(super) health_check: Check<S>,
    pub(super) close_signal: Signal<S>,
    /// The health check interval: a new connection whose server answers "not serving" is
    /// checked again after it, within the attempt's deadline.
    pub(super) recheck: Option<Duration>,
    pub(super) timeout: Duration,
}

impl<S> Dialer<S> {
    /// The maker's `call`, then the health check, then the close signal; all within
    /// `deadline`. Hands the maker back with the outcome.
    pub(super) async fn connect<A>(
        self,
        mut maker: Maker<A, S>,
        address: A,
        deadline: Instant,
    ) -> (Maker<A, S>, Result<Connection<S>, ConnectError>) {
        let outcome = self.connect_with(&mut maker, address, deadline).await;
        (maker, outcome)
    }

    async fn connect_with<A>(
        &self,
        maker: &mut Maker<A, S>,
        address: A,
        deadline: Instant,
    ) -> Result<Connection<S>, ConnectError> {
        let connection = bounded(
            deadline,
            self.timeout,
            "while connecting",
            move || async move {
                poll_fn(|cx| maker.poll_ready(cx)).await?;
                maker.call(address).await
            },
            ConnectError::connect,
        )
        .await?;

        // ## Connected? Not before the health check passes. A server that answers "not
        // serving" is asked again at the check interval, within the deadline.
        loop {
            let checked = bounded(
                deadline,
                self.timeout,
                "in the health check",
                || self.health_check.check(&connection),
                ConnectError::health_check,
            )
            .await;
            match (checked, self.recheck) {
                (Ok(()), _) => break,
                (Err(error), Some(interval))
                    if is_not_serving_error(&error)
                        && Instant::now()
                            .checked_add(interval)
                            .is_some_and(|at| at < deadline) =>
                {
                    tokio::time::sleep(interval).await;
                }
                (Err(error), _) => return Err(error),
            }
        }

        // A panic in the close signal's closure fails the attempt at once; one in its future
        // ends the connection later, as an error.
        let closed = guarded(|| self.close_signal.closed(&connection))
            .map_err(|panic| ConnectError::panic(&panic))?;
        Ok(Connection {
            service: connection,
            closed,
        })
    }
}

/// Whether a failed check's error says "not serving" (a [`NotServing`] in its chain).
pub(super) fn is_not_serving_error(error: &ConnectError) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(error) = source {
        if error.is::<NotServing>() {
            return true;
        }
        source = error.source();
    }
    false
}
