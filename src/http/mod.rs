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
//! in.
//!
//! Requests with a path-only URI (as tonic sends them) get a scheme and authority: by default
//! `http` and the connector's logical name ([`Http2Connector::origin`]; with
//! [`PersistentConnectionLayer::http2`], the layer's server name), never a replica's IP
//! address, which changes on failover and is wrong for TLS and virtual hosts.
//!
//! [`PersistentConnectionLayer`]: crate::PersistentConnectionLayer
//! [`PersistentConnectionLayer::http2`]: crate::PersistentConnectionLayer::http2

mod dial;
mod http1;
mod http2;
mod replay;
mod resend;
mod sniff;

use std::{fmt, sync::Arc};

use http::{
    Request, Uri,
    uri::{Authority, Parts, Scheme},
};

pub use self::{
    dial::Dial,
    http1::{Http1Connection, Http1Connector},
    http2::{Http2Connection, Http2Connector},
    resend::{Idempotent, NotProcessed},
};

/// The scheme and authority given to requests whose URI has none.
#[derive(Clone, Debug)]
struct Origin {
    scheme: Scheme,
    authority: Authority,
}

impl Origin {
    /// Parses `origin` (`http://name[:port]` or `name[:port]`, scheme `http` by default).
    fn parse(origin: &str) -> Result<Self, InvalidOrigin> {
        let uri: Uri = origin
            .parse()
            .map_err(|_| InvalidOrigin(origin.to_owned()))?;
        let parts = uri.into_parts();
        let authority = parts
            .authority
            .ok_or_else(|| InvalidOrigin(origin.to_owned()))?;
        let path = parts.path_and_query.as_ref().map_or("", |p| p.as_str());
        if !(path.is_empty() || path == "/") {
            return Err(InvalidOrigin(origin.to_owned()));
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidOrigin(String);

impl std::fmt::Display for InvalidOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid origin {:?}: expected [scheme://]host[:port], e.g. \"http://billing\"",
            self.0
        )
    }
}

impl std::error::Error for InvalidOrigin {}

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

/// The origin a connection uses: the configured one, or else the dialed address's.
fn origin_for<A: Dial>(configured: &Option<Arc<Origin>>, address: &A) -> Arc<Origin> {
    configured.clone().unwrap_or_else(|| {
        let authority = address.authority();
        Arc::new(Origin::parse(&authority).unwrap_or(Origin {
            scheme: Scheme::HTTP,
            authority: Authority::from_static("localhost"),
        }))
    })
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
