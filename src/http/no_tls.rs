//! Without a TLS feature: the connectors' TLS settings, uninhabited, so that their code is the
//! same with and without TLS and a plain build carries none of it.

use tokio::net::TcpStream;

use super::{Dial, Origin, stream::Stream};
use crate::BoxError;

/// No TLS settings can exist: `Option<Tls>` is always `None`.
#[derive(Clone, Debug)]
pub(crate) enum Tls {}

/// No handshake can exist.
pub(crate) enum Handshake {}

impl Tls {
    pub(crate) fn name_layer(&mut self, _: Option<&str>) {
        match *self {}
    }

    pub(crate) fn handshake<A: Dial>(
        &self,
        _: Option<&Origin>,
        _: &A,
    ) -> Result<Handshake, BoxError> {
        match *self {}
    }
}

impl Handshake {
    pub(crate) async fn run(&self, _: TcpStream) -> Result<Stream, BoxError> {
        match *self {}
    }

    pub(crate) fn explain(&self, _: BoxError) -> BoxError {
        match *self {}
    }
}
