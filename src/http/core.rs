//! [`Core`]: what the HTTP/1 and HTTP/2 connectors share: the origin given to requests that
//! have none, the connector's newest connection (where a refused request is sent again), and
//! the resend settings with their counters.

use std::sync::Arc;

use super::{
    Dial, Origin, name_origin, origin_for,
    resend::{self, Newest, ReplayConfig},
};
use crate::stats::RequestCounters;

/// The part of a connector that is the same for HTTP/1 and HTTP/2; `C` is what the
/// connector's connections share.
pub(super) struct Core<C> {
    /// The origin set on the connector (or taken from the layer's server name), if any.
    pub(super) origin: Option<Arc<Origin>>,
    /// This connector's newest connection, where refused requests are sent again.
    pub(super) latest: Newest<C>,
    pub(super) replay: ReplayConfig,
}

impl<C> Core<C> {
    pub(super) fn new() -> Self {
        Self {
            origin: None,
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
            latest: resend::newest(),
            replay: self.replay.clone(),
        }
    }

    pub(super) fn set_origin(&mut self, origin: &str) -> Result<(), crate::InvalidSetting> {
        self.origin = Some(Arc::new(Origin::parse(origin)?));
        Ok(())
    }

    /// The origin of a connection to `address`: the configured one, or the address's own.
    pub(super) fn origin_for<A: Dial>(&self, address: &A) -> Arc<Origin> {
        origin_for(&self.origin, address)
    }

    /// Takes the layer's server name (if one was set) as the origin, unless one is set; hands
    /// out the request counters for the layer's `Stats`. For `.http1()` / `.http2()`.
    pub(super) fn wire(&mut self, server_name: Option<&str>) -> Arc<RequestCounters> {
        name_origin(&mut self.origin, server_name);
        self.replay.counters.clone()
    }
}
