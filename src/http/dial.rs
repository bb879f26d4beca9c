//! Addresses the HTTP connectors can dial: a [`SocketAddr`], or a `host:port` name resolved
//! on every attempt.

use std::{future::Future, io, net::SocketAddr};

use tokio::net::TcpStream;

mod sealed {
    pub trait Sealed {}
}

/// An address the crate's HTTP connectors can dial: [`SocketAddr`], or a `host:port` name
/// (`String` or `&'static str`) resolved on every attempt, each resolved address tried in
/// turn. Sealed.
pub trait Dial: sealed::Sealed + Clone + Send + Sync + 'static {
    /// Opens a TCP connection, with `TCP_NODELAY` set.
    fn dial(&self) -> impl Future<Output = io::Result<TcpStream>> + Send;

    /// The `host:port` this address names (for the `Host` header or `:authority` when no
    /// logical name is configured).
    fn authority(&self) -> String;
}

impl sealed::Sealed for SocketAddr {}

impl Dial for SocketAddr {
    async fn dial(&self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(self).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn authority(&self) -> String {
        self.to_string()
    }
}

impl sealed::Sealed for String {}

impl Dial for String {
    fn dial(&self) -> impl Future<Output = io::Result<TcpStream>> + Send {
        dial_name(self.clone())
    }

    fn authority(&self) -> String {
        self.clone()
    }
}

impl sealed::Sealed for &'static str {}

impl Dial for &'static str {
    fn dial(&self) -> impl Future<Output = io::Result<TcpStream>> + Send {
        dial_name(self.to_string())
    }

    fn authority(&self) -> String {
        (*self).to_owned()
    }
}

/// Resolves `name` (`host:port`) and connects to the first address that accepts.
async fn dial_name(name: String) -> io::Result<TcpStream> {
    let mut last_error = None;
    for address in tokio::net::lookup_host(&name).await? {
        match address.dial().await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{name} resolved to no address"),
        )
    }))
}
