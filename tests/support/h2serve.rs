//! One HTTP/2 server connection served until it ends, shut down gracefully (`GOAWAY`, the
//! streams in flight finish) when `goaway` changes. Shared by the test servers of
//! `h2server.rs` and `refusing.rs` (each includes it with `#[path]`).
#![allow(dead_code, unreachable_pub)]

use std::{convert::Infallible, future::Future};

use http::{Request, Response};
use http_body::Body;
use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpStream, sync::watch};

/// Serves `stream` with `answer` until the connection ends; a change of `goaway` starts a
/// graceful shutdown.
pub async fn until_goaway<F, Fut, B>(stream: TcpStream, answer: F, mut goaway: watch::Receiver<u64>)
where
    F: Fn(Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let connection = http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service_fn(answer));
    tokio::pin!(connection);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            changed = goaway.changed(), if !shutting_down => {
                shutting_down = true;
                if changed.is_ok() {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
