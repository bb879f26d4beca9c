//! Error types: [`Closed`], [`ConnectError`] and [`InvalidSetting`].

use std::{error::Error, fmt, sync::Arc, time::Duration};

use crate::BoxError;

// === Closed ===

/// The error returned once the persistent connection has been closed.
///
/// `poll_ready` returns it after [`Handle::close`](crate::Handle::close) (or after the driver has
/// ended for any other reason), and [`Handle::connected`](crate::Handle::connected) resolves to it.
/// It is the only error `poll_ready` ever returns: while disconnected the service is `Pending`.
///
/// Layers such as `tower::buffer::Buffer` wrap the errors of the service below them; use
/// [`Closed::find_in`] to look for it anywhere in an error's source chain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    _priv: (),
}

impl Closed {
    pub(crate) const fn new() -> Self {
        Self { _priv: () }
    }

    /// Finds a `Closed` in `error` or anywhere in its [`source`](Error::source) chain.
    ///
    /// ```
    /// use persistent_connection::{BoxError, Closed};
    /// # fn closed_error() -> BoxError { Box::new(std::io::Error::other(
    /// #     persistent_connection::ConnectError::closed())) }
    /// let err: BoxError = closed_error(); // e.g. from a `Buffer` above the layer
    /// assert!(Closed::find_in(&*err).is_some());
    /// ```
    pub fn find_in<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Self> {
        find_in_chain(error)
    }
}

/// The `T` in `error` or anywhere in its chain of sources (a `Buffer` wraps errors).
pub(crate) fn find_in_chain<'a, T: Error + 'static>(
    error: &'a (dyn Error + 'static),
) -> Option<&'a T> {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        next = error.source();
    }
    None
}

impl fmt::Debug for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Closed")
    }
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("persistent connection closed")
    }
}

impl Error for Closed {}

// === ConnectError ===

/// Where a connection attempt failed; see [`ConnectError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The address source (`get_address`) returned an error.
    Discovery,
    /// The maker (its `poll_ready` or its response future) returned an error.
    Connect,
    /// Discovery plus connect took longer than the connect timeout.
    Timeout,
    /// The address source or the maker panicked.
    Panic,
    /// The persistent connection was closed, so no attempt will be made.
    Closed,
    /// The new connection failed its [health check](crate::health::HealthCheck).
    HealthCheck,
}

/// Why one connection attempt failed.
///
/// Reported in [`Event::FailedToConnect`](crate::Event::FailedToConnect) and returned by
/// [`Handle::connected_or_failed_to_connect`](crate::Handle::connected_or_failed_to_connect).
/// Cloning is cheap: clones share the cause. Two errors are "the same" for de-duplication of
/// events when their `Display` texts are equal.
#[derive(Clone)]
pub struct ConnectError {
    kind: ConnectErrorKind,
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Cause(Arc<dyn Error + Send + Sync>),
    Timeout(Duration, &'static str),
    Panic(Arc<str>),
    Closed(Closed),
}

impl ConnectError {
    pub(crate) fn discovery(cause: BoxError) -> Self {
        Self {
            kind: ConnectErrorKind::Discovery,
            inner: Inner::Cause(Arc::from(cause)),
        }
    }

    pub(crate) fn connect(cause: BoxError) -> Self {
        Self {
            kind: ConnectErrorKind::Connect,
            inner: Inner::Cause(Arc::from(cause)),
        }
    }

    pub(crate) fn health_check(cause: BoxError) -> Self {
        Self {
            kind: ConnectErrorKind::HealthCheck,
            inner: Inner::Cause(Arc::from(cause)),
        }
    }

    /// The connect timeout `after` ran out `during` a step of the attempt ("in address
    /// discovery", ...).
    pub(crate) fn timeout(after: Duration, during: &'static str) -> Self {
        Self {
            kind: ConnectErrorKind::Timeout,
            inner: Inner::Timeout(after, during),
        }
    }

    pub(crate) fn panic(message: &str) -> Self {
        Self {
            kind: ConnectErrorKind::Panic,
            inner: Inner::Panic(Arc::from(message)),
        }
    }

    /// The error for "the persistent connection is closed": kind [`ConnectErrorKind::Closed`],
    /// with [`Closed`] as its source.
    pub fn closed() -> Self {
        Self {
            kind: ConnectErrorKind::Closed,
            inner: Inner::Closed(Closed::new()),
        }
    }

    /// Where the attempt failed.
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.inner, self.kind) {
            (Inner::Cause(cause), ConnectErrorKind::Discovery) => {
                write!(f, "address discovery failed: {cause}")
            }
            (Inner::Cause(cause), ConnectErrorKind::HealthCheck) => {
                write!(f, "health check failed: {cause}")
            }
            (Inner::Cause(cause), _) => write!(f, "connect failed: {cause}"),
            (Inner::Timeout(after, during), _) => {
                write!(f, "connect attempt timed out after {after:?} {during}")
            }
            (Inner::Panic(message), _) => write!(f, "connect attempt panicked: {message}"),
            (Inner::Closed(closed), _) => fmt::Display::fmt(closed, f),
        }
    }
}

impl fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectError")
            .field("kind", &self.kind)
            .field("message", &format_args!("{self}"))
            .finish()
    }
}

impl Error for ConnectError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.inner {
            Inner::Cause(cause) => Some(&**cause),
            Inner::Closed(closed) => Some(closed),
            Inner::Timeout(..) | Inner::Panic(_) => None,
        }
    }
}

// === InvalidSetting ===

/// A setting refused by a fallible setter:
/// [`PersistentConnectionLayer::try_jitter`](crate::PersistentConnectionLayer::try_jitter),
/// [`Exponential::try_new`](crate::retry::Exponential::try_new), the HTTP connectors'
/// `try_origin`, or (features `tls`, `tls-aws-lc-rs`) `http::TlsConfig`'s `server_name` and
/// `client_auth`. A connection attempt with TLS whose server name is not valid (or missing)
/// fails with one too. Its text names the setting, the value and what is expected;
/// [`setting`](Self::setting) names the setting alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSetting {
    setting: &'static str,
    message: String,
}

impl InvalidSetting {
    pub(crate) fn new(setting: &'static str, message: String) -> Self {
        Self { setting, message }
    }

    /// The setting refused: `"jitter"`, `"retry policy"`, `"origin"`, `"TLS server name"` or
    /// `"client certificate"`.
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Checks that `value` is a jitter fraction in `[0, 1]`.
    pub(crate) fn check_jitter(value: f64) -> Result<f64, Self> {
        if (0.0..=1.0).contains(&value) {
            Ok(value)
        } else {
            Err(Self::new(
                "jitter",
                format!("invalid jitter {value}: must be a fraction in [0, 1] (0.3 means ±30 %)"),
            ))
        }
    }
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for InvalidSetting {}

// === NotReady ===

/// `call` was made on a clone that holds no connection: `poll_ready` had not returned `Ready`.
#[derive(Debug)]
pub(crate) struct NotReady;

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("call without a connection: poll_ready must return Ready(Ok) before call")
    }
}

impl Error for NotReady {}
