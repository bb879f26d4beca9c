//! Makers for HTTP clients: [`Http2Connector`] and [`Http1Connector`], and their
//! connections.
//!
//! A connector is a `Service<A>` (for a [`SocketAddr`](std::net::SocketAddr), or a
//! `host:port` name resolved on every attempt) that dials TCP with `TCP_NODELAY`, performs the
//! hyper handshake, spawns the connection task, and returns the connection: a cloneable tower
//! `Service<http::Request<B>>`. Wrapped by [`PersistentConnectionLayer`], it is the transport
//! of hyper and tonic clients.
//!
//! Each connection offers a close signal, [`Http2Connection::closed`], that resolves when the
//! connection has ended (the server closed or reset it, the keep-alive timed out, or the
//! server sent `GOAWAY`); pass it to
//! [`close_signal`](crate::PersistentConnectionLayer::close_signal) so the layer reconnects without
//! waiting for a request to fail, or use [`PersistentConnectionLayer::http2`], which wires it
//! in. The signal says [`Graceful`](crate::close::CloseReason::Graceful) for a goodbye of a
//! connection that has answered at least one request, and
//! [`GracefulBeforeServing`](crate::close::CloseReason::GracefulBeforeServing) for one before any
//! answer.
//!
//! Requests with a path-only URI (as tonic sends them) get a scheme and authority: by default
//! `http` and the connector's logical name ([`Http2Connector::origin`]; with
//! [`PersistentConnectionLayer::http2`], the layer's server name), never a replica's IP
//! address, which changes on failover and is wrong for TLS and virtual hosts.
//!
//! # TLS
//!
//! With the feature `tls` (rustls through tokio-rustls, the `ring` provider; `tls-aws-lc-rs`
//! for aws-lc-rs), `Http2Connector::tls` and `Http1Connector::tls` take a `TlsConfig`: the TLS
//! handshake follows the TCP connect within the attempt, so the layer's connect timeout bounds
//! it and a failed handshake is a failed attempt. ALPN is `h2` for HTTP/2 (a server that does
//! not choose it is refused) and `http/1.1` for HTTP/1; requests get the `https` scheme. The
//! name verified in the certificate and sent as SNI is the layer's server name (or
//! `TlsConfig::server_name`), never the address dialed: with discovery, that is a replica's IP
//! address, while the identity to check is the service's name. A failed handshake reports a
//! `TlsError` that names the server name, the address and the reason, with the
//! `rustls::Error` as its source. Roots come from a `rustls::RootCertStore`
//! (`TlsConfig::from_roots`), Mozilla's list (`TlsConfig::webpki_roots`, feature
//! `tls-webpki-roots`), the operating system (`TlsConfig::platform`, feature
//! `tls-platform-verifier`), or a caller's `rustls::ClientConfig`
//! (`TlsConfig::from_client_config`); `TlsConfig::client_auth` adds a client certificate
//! (mutual TLS).
//!
//!
//! # When the server says goodbye: what is replayed, what is not
//!
//! A connector sends a request again, on its next connection, only when the failure proves
//! that the server never processed it:
//!
//! - HTTP/2: the stream was above the last stream id of the server's `GOAWAY` (`NO_ERROR`),
//!   or was not opened yet when the `GOAWAY` came; the server reset the stream with
//!   `REFUSED_STREAM` (this one may go to the same connection, if it still takes requests);
//! - both: hyper handed the request back unwritten, because the connection had closed;
//! - HTTP/1 only (RFC 9112, section 9.3.1): an idempotent request (`GET`, `HEAD`, `OPTIONS`,
//!   `PUT`, `DELETE`, `TRACE`, or one carrying [`Idempotent`] in its extensions) whose *reused*
//!   connection (it had answered an earlier request) closed before any byte of its response.
//!
//! Nothing else is sent again: not a stream at or below the `GOAWAY`'s last stream id whose
//! connection then dies, not a request that got part of its response, not a non-idempotent
//! HTTP/1 request whose connection closed after it was written. Those fail with the
//! connection's error.
//!
//! A resend waits for the connector's next connection (made by the layer's driver), and goes
//! through the same origin and `Host` filling as the first send. It is bounded: at most
//! [`max_replays`](Http2Connector::max_replays) resends (default 3), and only if the body fit
//! in [`max_replay_body`](Http2Connector::max_replay_body) (default 64 KiB: the body is kept
//! as hyper reads it, and dropped when the call is over; empty bodies cost nothing). A request
//! that cannot be sent again fails with [`NotProcessed`], which means it is safe for the
//! caller to retry, whatever the request; so does one whose connector is gone (the layer was
//! closed) before a next connection came. With the layer's
//! [`Handle::stats`](crate::Handle::stats), `replayed_requests` counts the resends and
//! `refused_requests` the `NotProcessed` failures.
//!
//! One race in hyper is closed by the HTTP/2 connector: hyper's dispatcher opens a stream,
//! then checks the connection, and fails the request with the `GOAWAY` error if one came in
//! between, though the stream's `HEADERS` may be written at or below the last stream id. The
//! connector holds a `GOAWAY` back from h2 while the dispatcher runs, and the dispatcher while
//! h2 takes a `GOAWAY` in, so that error always proves a refusal. It does the same with the
//! end of the connection's stream (or a read error): a request the dispatcher took while h2
//! read it would fail with h2's "connection closed" error, opened or not; with the dispatcher
//! held back, it stays in hyper's queue, hyper hands it back when the connection stops, and
//! the connector sends it again.
//!
//! ```
//! use std::net::SocketAddr;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer,
//!     http::{Http2Connector, NotProcessed},
//! };
//! use tower::{Service, ServiceExt};
//!
//! /// Whether `error` says the server never processed the request.
//! fn not_processed(error: &BoxError) -> bool {
//!     let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
//!     while let Some(error) = source {
//!         if error.is::<NotProcessed>() {
//!             return true;
//!         }
//!         source = error.source();
//!     }
//!     false
//! }
//!
//! async fn charge(addr: SocketAddr, order: Bytes) -> Result<(), BoxError> {
//!     let connector = Http2Connector::<Full<Bytes>>::new()
//!         .max_replays(5) // resends of a refused request, each on the next connection
//!         .max_replay_body(256 * 1024); // bytes of a body kept for them
//!     let mut svc = PersistentConnectionLayer::fixed_address(addr)
//!         .server_name("billing")
//!         .http2(connector);
//!     let request = http::Request::post("/charge").body(Full::new(order))?;
//!     match svc.ready().await?.call(request).await {
//!         Ok(_response) => Ok(()),
//!         // The server never saw it: safe to try again later, even though it is a POST.
//!         Err(error) if not_processed(&error) => Err(error),
//!         // The server may have processed it: do not blindly retry a POST.
//!         Err(error) => Err(error),
//!     }
//! }
//! # let _ = charge;
//! ```
//!
//! [`PersistentConnectionLayer`]: crate::PersistentConnectionLayer
//! [`PersistentConnectionLayer::http2`]: crate::PersistentConnectionLayer::http2

mod ahead;
mod base;
mod dial;
mod executor;
mod gate;
#[cfg(all(test, loom))]
pub(crate) use gate::GoAwayGate;
mod http1;
mod http2;
mod keep_alive;
mod observe;
mod replay;
mod resend;
mod sniff;
mod stream;
#[cfg(feature = "_tls")]
mod tls;
#[cfg(not(feature = "_tls"))]
#[path = "no_tls.rs"]
mod tls;

use std::{fmt, sync::Arc};

use crate::InvalidSetting;

use http::{
    Request, Uri,
    uri::{Authority, Parts, Scheme},
};

#[cfg(feature = "_tls")]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))))]
pub use self::tls::{TlsConfig, TlsError};
pub use self::{
    dial::Dial,
    executor::Executor,
    http1::{Http1Connection, Http1Connector},
    http2::{Http2Connection, Http2Connector},
    resend::{Idempotent, NotProcessed},
};
/// The rustls this crate is built with, for the types [`TlsConfig`] takes
/// ([`rustls::RootCertStore`], [`rustls::ClientConfig`], [`rustls::pki_types`]) and the errors
/// [`TlsError`] carries.
#[cfg(feature = "_tls")]
#[cfg_attr(docsrs, doc(cfg(any(feature = "tls", feature = "tls-aws-lc-rs"))))]
pub use rustls;

/// Why an HTTP connection takes no new request: the error of its `poll_ready`, or of a `call`
/// made without a successful `poll_ready`. The layer takes it as the end of the connection and
/// moves on to the next one; a caller holding a connection of its own can match on it:
///
/// ```
/// use persistent_connection::{BoxError, http::ConnectionUnavailable};
///
/// fn goodbye(error: &BoxError) -> bool {
///     error.downcast_ref::<ConnectionUnavailable>() == Some(&ConnectionUnavailable::GoAway)
/// }
/// # assert!(!goodbye(&BoxError::from("other")));
/// # assert!(goodbye(&BoxError::from(ConnectionUnavailable::GoAway)));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionUnavailable {
    /// HTTP/2: the server sent `GOAWAY`. The streams it took finish; new requests go to the
    /// next connection.
    GoAway,
    /// HTTP/2: the connection has sent as many requests as the server takes on one (see
    /// [`Http2Connector::dial_ahead`]).
    RequestLimit,
    /// The connection has closed.
    Closed,
    /// `call` without a successful `poll_ready` first (an HTTP/1 connection carries one
    /// request at a time, and `poll_ready` gives the turn).
    NotReady,
}

impl fmt::Display for ConnectionUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::GoAway => "the server sent GOAWAY: this connection takes no new requests",
            Self::RequestLimit => {
                "this connection reached the server's request limit: it takes no new requests"
            }
            Self::Closed => "the connection is closed",
            Self::NotReady => "call without a turn: poll_ready must return Ready(Ok) before call",
        })
    }
}

impl std::error::Error for ConnectionUnavailable {}

/// The scheme and authority given to requests whose URI has none.
#[derive(Clone, Debug)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// Parses `origin` (`http://name[:port]` or `name[:port]`, scheme `http` by default).
    fn parse(origin: &str) -> Result<Self, InvalidSetting> {
        let uri: Uri = origin.parse().map_err(|_| invalid_origin(origin))?;
        let parts = uri.into_parts();
        let authority = parts.authority.ok_or_else(|| invalid_origin(origin))?;
        let path = parts.path_and_query.as_ref().map_or("", |p| p.as_str());
        if !(path.is_empty() || path == "/") {
            return Err(invalid_origin(origin));
        }
        Ok(Self {
            scheme: parts.scheme.unwrap_or(Scheme::HTTP),
            authority,
        })
    }

    /// Fills in the scheme and authority of `request` if its URI has none.
    fn apply<B>(&self, request: &mut Request<B>) {
        let uri = request.uri_mut();
        if uri.authority().is_some() {
            return;
        }
        let mut parts = Parts::from(std::mem::take(uri));
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set: this cannot fail.
        if let Ok(filled) = Uri::from_parts(parts) {
            *uri = filled;
        }
    }
}

/// An origin that is not `[scheme://]host[:port]`.
fn invalid_origin(origin: &str) -> InvalidSetting {
    InvalidSetting::new(
        "origin",
        format!(
            "invalid origin {origin:?}: expected [scheme://]host[:port], e.g. \"http://billing\""
        ),
    )
}

/// Makes the layer's server name (if one was set) the origin, unless one is configured. A
/// name that is not a valid authority is logged and ignored.
fn name_origin(origin: &mut Option<Arc<Origin>>, server_name: Option<&str>) {
    let Some(name) = server_name.filter(|_| origin.is_none()) else {
        return;
    };
    match Origin::parse(name) {
        Ok(named) => *origin = Some(Arc::new(named)),
        Err(error) => tracing::warn!(
            persistent_connection_to = %name,
            %error,
            "the server name is not a valid authority; requests without one get the dialed address",
        ),
    }
}

/// The origin a connection uses: the configured one, or else the dialed address's; with
/// `tls`, its scheme is `https`.
fn origin_for<A: Dial>(configured: &Option<Arc<Origin>>, address: &A, tls: bool) -> Arc<Origin> {
    let origin = configured.clone().unwrap_or_else(|| {
        let authority = address.authority();
        Arc::new(Origin::parse(&authority).unwrap_or(Origin {
            scheme: Scheme::HTTP,
            authority: Authority::from_static("localhost"),
        }))
    });
    if tls && origin.scheme != Scheme::HTTPS {
        return Arc::new(Origin {
            scheme: Scheme::HTTPS,
            authority: origin.authority.clone(),
        });
    }
    origin
}

/// A shared hyper error, as an error of its own (`Arc<hyper::Error>` is not one).
#[derive(Debug)]
pub(crate) struct ArcError(pub(crate) Arc<hyper::Error>);

impl fmt::Display for ArcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path-only URI gets the origin's scheme and authority; an absolute one is kept.
    #[test]
    fn origin_fills_in_path_only_uris() {
        let origin = Origin::parse("http://billing").unwrap();
        let mut request = Request::get("/grpc.health.v1.Health/Check")
            .body(())
            .unwrap();
        origin.apply(&mut request);
        assert_eq!(request.uri(), "http://billing/grpc.health.v1.Health/Check");

        let mut absolute = Request::get("https://other:8443/x?y=1").body(()).unwrap();
        origin.apply(&mut absolute);
        assert_eq!(absolute.uri(), "https://other:8443/x?y=1");

        let origin = Origin::parse("billing:8080").unwrap();
        assert_eq!(origin.scheme, Scheme::HTTP);
        assert_eq!(origin.authority, "billing:8080");
    }

    /// Origins with a path, or without a host, are refused with a clear message.
    #[test]
    fn origin_rejects_paths_and_garbage() {
        for bad in ["http://billing/api", "/path", "http://", "not a uri"] {
            let err = Origin::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("expected [scheme://]host[:port]"),
                "{bad}"
            );
        }
    }
}
