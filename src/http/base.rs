//! [`Core`]: what the HTTP/1 and HTTP/2 connectors share: the origin given to requests that
//! have none, the TLS settings, the connector's newest connection (where a refused request is
//! sent again), and the resend settings with their counters.

use std::{future::Future, sync::Arc};

use tokio::{net::TcpStream, sync::watch};

use super::{
    Dial, Origin, name_origin, origin_for,
    resend::{self, Newest, ReplayConfig},
    sniff::Status,
    stream::Stream,
    tls::{Handshake, Tls},
};
use crate::{BoxError, stats::RequestCounters};

/// The part of a connector that is the same for HTTP/1 and HTTP/2; `C` is what the
/// connector's connections share.
pub(super) struct Core<C> {
    /// The origin set on the connector (or taken from the layer's server name), if any.
    pub(super) origin: Option<Arc<Origin>>,
    /// TLS, if the connector's connections use it.
    pub(super) tls: Option<Tls>,
    /// This connector's newest connection, where refused requests are sent again.
    pub(super) latest: Newest<C>,
    pub(super) replay: ReplayConfig,
}

impl<C> Core<C> {
    pub(super) fn new() -> Self {
        Self {
            origin: None,
            tls: None,
            latest: resend::newest(),
            replay: ReplayConfig::new(),
        }
    }

    /// The same settings and request counters, with connections of its own: a request refused
    /// on one of them is sent again on this core's next connection, never on another's (which
    /// may serve another server).
    pub(super) fn fork(&self) -> Self {
        Self {
            origin: self.origin.clone(),
            tls: self.tls.clone(),
            latest: resend::newest(),
            replay: self.replay.clone(),
        }
    }

    pub(super) fn set_origin(&mut self, origin: &str) -> Result<(), crate::InvalidSetting> {
        self.origin = Some(Arc::new(Origin::parse(origin)?));
        Ok(())
    }

    /// The origin of a connection to `address`: the configured one, or the address's own
    /// (scheme `https` with TLS).
    pub(super) fn origin_for<A: Dial>(&self, address: &A) -> Arc<Origin> {
        origin_for(&self.origin, address, self.tls.is_some())
    }

    /// The TLS handshake of an attempt to `address`, if the connector uses TLS.
    pub(super) fn handshake_for<A: Dial>(
        &self,
        address: &A,
    ) -> Result<Option<Handshake>, BoxError> {
        handshake_for(&self.tls, &self.origin, address)
    }

    /// Takes the layer's server name (if one was set) as the origin, unless one is set, and as
    /// the TLS server name, unless the TLS config names one; hands out the request counters for
    /// the layer's `Stats`. For `.http1()` / `.http2()`.
    pub(super) fn wire(&mut self, server_name: Option<&str>) -> Arc<RequestCounters> {
        name_origin(&mut self.origin, server_name);
        if let Some(tls) = &mut self.tls {
            tls.name_layer(server_name);
        }
        self.replay.counters.clone()
    }
}

/// The TLS handshake of an attempt to `address` with these settings, if `tls` is set: its
/// server name comes from the settings, or else the configured `origin`, never from `address`.
pub(super) fn handshake_for<A: Dial>(
    tls: &Option<Tls>,
    origin: &Option<Arc<Origin>>,
    address: &A,
) -> Result<Option<Handshake>, BoxError> {
    tls.as_ref()
        .map(|tls| tls.handshake(origin.as_deref(), address))
        .transpose()
}

/// The transport over `tcp`: the stream itself, or a TLS stream after `handshake`.
pub(super) async fn secure(
    tcp: TcpStream,
    handshake: Option<&Handshake>,
) -> Result<Stream, BoxError> {
    match handshake {
        None => Ok(Stream::Tcp(tcp)),
        Some(handshake) => handshake.run(tcp).await,
    }
}

/// Spawns a connection's task (hyper's `connection` future) and publishes its end in
/// `status`: `finish` sees hyper's result and the status, and returns the result to publish
/// (a connector may take an error for a goodbye, or record what the end says). The last step
/// of both connectors' pipeline: dial, observe the bytes read, handshake, spawn and watch.
pub(super) fn spawn_watched<F>(
    connection: F,
    status: Arc<watch::Sender<Status>>,
    finish: impl FnOnce(Result<(), hyper::Error>, &mut Status) -> Result<(), hyper::Error>
    + Send
    + 'static,
) where
    F: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let result = connection.await;
        status.send_modify(|status| {
            let result = finish(result, status);
            status.ended = Some(result.map_err(Arc::new));
        });
    });
}

/// The settings a connector keeps in its [`Core`], as public builder methods of `$connector`:
/// `origin`, `try_origin`, `max_replays`, `max_replay_body`. `$origin` is the first paragraph
/// of `origin`'s documentation (what the origin is for, in the protocol's words), `$body`
/// says which bodies are kept, `$wire` names the layer method that applies the connector.
macro_rules! core_settings {
    ($connector:literal, $wire:literal, origin: $origin:literal, body: $body:literal $(,)?) => {
        #[doc = $origin]
        /// Use a logical name: it stays the same when the client moves to another replica.
        ///
        #[doc = concat!(
            "Default is the layer's server name, if one was set, when applied with ",
            "[`PersistentConnectionLayer::", $wire, "`](crate::PersistentConnectionLayer::",
            $wire, "), else the dialed address."
        )]
        ///
        /// # Panics
        ///
        /// If `origin` is not `[scheme://]host[:port]`; see [`try_origin`](Self::try_origin).
        pub fn origin(self, origin: &str) -> Self {
            match self.try_origin(origin) {
                Ok(connector) => connector,
                Err(error) => panic!(concat!($connector, "::origin: {}"), error),
            }
        }

        /// Like [`origin`](Self::origin), but returns an error for an invalid origin.
        ///
        /// # Errors
        ///
        /// [`InvalidSetting`](crate::InvalidSetting) if `origin` is not
        /// `[scheme://]host[:port]`.
        pub fn try_origin(mut self, origin: &str) -> Result<Self, crate::InvalidSetting> {
            self.core.set_origin(origin)?;
            Ok(self)
        }

        /// How many times a request the server provably never processed is sent again, each
        /// time on this connector's next connection, before it fails with
        /// [`NotProcessed`](crate::http::NotProcessed). `0` turns resends off. Default is 3.
        ///
        /// A request the server may have processed is never sent again.
        pub fn max_replays(mut self, max: usize) -> Self {
            self.core.replay.max_replays = max;
            self
        }

        #[doc = concat!("The most bytes of ", $body, " kept for a resend. A request whose body was ")]
        /// larger fails with [`NotProcessed`](crate::http::NotProcessed) when the server
        /// refuses it or its connection closes before it is written. Empty bodies cost nothing.
        /// Default is 64 KiB.
        pub fn max_replay_body(mut self, bytes: usize) -> Self {
            self.core.replay.max_body = bytes;
            self
        }
    };
}

pub(super) use core_settings;

/// `Default` for a connector: its `new()`.
macro_rules! default_is_new {
    ($connector:ident) => {
        impl<B> Default for $connector<B> {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

pub(super) use default_is_new;
