//! Health-gated readiness: the [`HealthCheck`] a new connection must pass before it counts as
//! connected, and that may run periodically while it is up.

use std::{fmt, future::Future};

use futures_util::{TryFutureExt as _, future::MapErr};

use crate::BoxError;

/// Checks a connection; set with
/// [`PersistentConnectionLayer::health_check`](crate::PersistentConnectionLayer::health_check).
///
/// The driver runs the check on every new connection before it publishes it: the service
/// stays `Pending` (and `Connected` is not reported) until the check passes, and a failed
/// check is a failed attempt (kind [`HealthCheck`](crate::ConnectErrorKind::HealthCheck)),
/// followed by the retry delay like any other. With
/// [`health_check_interval`](crate::PersistentConnectionLayer::health_check_interval) it also
/// runs periodically, and a failure ends the connection; an answer of [`NotServing`] instead
/// makes the connection unready while keeping it (gRFC A17).
///
/// Implemented for `()` (no check, the default) and for every
/// `Fn(&S) -> impl Future<Output = Result<(), E>>` closure with `E: Into<BoxError>`. The future
/// must not borrow the connection: clone what it needs into it. A panic in the check is caught
/// and counts as a failure.
///
/// # Example: gRPC health checking with tonic-health
///
/// ```no_run
/// use persistent_connection::{
///     BoxError,
///     PersistentConnectionLayer,
///     health::NotServing,
///     http::{Http2Connection, Http2Connector},
/// };
/// use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
///
/// # #[tokio::main] async fn main() {
/// let addr: std::net::SocketAddr = "127.0.0.1:50051".parse().unwrap();
/// let channel = PersistentConnectionLayer::fixed_address(addr)
///     .server_name("billing")
///     .health_check(|conn: &Http2Connection<tonic::body::Body>| {
///         let mut client = HealthClient::new(conn.clone());
///         async move {
///             let request = HealthCheckRequest { service: "billing.Billing".into() };
///             let status = client.check(request).await?.into_inner().status;
///             if status == ServingStatus::Serving as i32 {
///                 Ok(())
///             } else {
///                 // Keeps the connection, unready, until a check sees SERVING again.
///                 Err(BoxError::from(NotServing::new(format!("status {status}"))))
///             }
///         }
///     })
///     .health_check_interval(std::time::Duration::from_secs(30))
///     .http2(Http2Connector::new());
/// let health = HealthClient::new(channel); // checks pass through the same connection
/// # let _ = health;
/// # }
/// ```
pub trait HealthCheck<S>: Send + Sync + 'static {
    /// The check's future: `Ok(())` if the connection is healthy.
    type Future: Future<Output = Result<(), BoxError>> + Send + 'static;

    /// Starts a check of `connection`.
    fn check(&self, connection: &S) -> Self::Future;
}

impl<S> HealthCheck<S> for () {
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn check(&self, _: &S) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

impl<S, F, Fut, E> HealthCheck<S> for F
where
    F: Fn(&S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    type Future = MapErr<Fut, fn(E) -> BoxError>;

    fn check(&self, connection: &S) -> Self::Future {
        self(connection).map_err(Into::into as fn(E) -> BoxError)
    }
}

/// The answer of a [`HealthCheck`] whose server is up but not serving (gRPC's `NOT_SERVING`):
/// return it (or any error with it in its source chain) from the check.
///
/// On a live connection it does not end the connection (gRFC A17): the layer withdraws it,
/// so requests wait in `poll_ready` and the [state](crate::State) is `NotServing`, while the
/// check keeps running at its interval; the first check that passes makes the connection
/// ready again at once. Only a check that fails otherwise, panics or times out ends the
/// connection. On a new connection, the check is repeated at the check interval (if one is
/// set) until it passes, within the connect timeout; after that it is a failed attempt.
///
/// ```
/// use persistent_connection::health::NotServing;
///
/// let answer: Result<(), NotServing> = Err(NotServing::new("status NOT_SERVING"));
/// assert_eq!(answer.unwrap_err().to_string(), "the server is not serving: status NOT_SERVING");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotServing {
    detail: String,
}

impl NotServing {
    /// "Not serving", with what the server said.
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
        }
    }
}

impl fmt::Display for NotServing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server is not serving: {}", self.detail)
    }
}

impl std::error::Error for NotServing {}
