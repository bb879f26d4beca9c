//! The HTTP connections' typed errors (`http::ConnectionUnavailable`): what `poll_ready` says
//! after the server's `GOAWAY` and after the connection closed. Real servers on 127.0.0.1.

#[path = "support/h2server.rs"]
mod h2server;

use std::{future::poll_fn, time::Duration};

use bytes::Bytes;
use h2server::H2Server;
use http_body_util::Empty;
use persistent_connection::{
    BoxError,
    http::{ConnectionUnavailable, Http2Connection, Http2Connector},
};
use tower::Service;

const BOUND: Duration = Duration::from_secs(10);

async fn connect(server: &H2Server) -> Http2Connection<Empty<Bytes>> {
    let mut connector = Http2Connector::<Empty<Bytes>>::new();
    tokio::time::timeout(BOUND, connector.call(server.addr()))
        .await
        .expect("connected within the bound")
        .expect("connected")
}

async fn ready_error(connection: &mut Http2Connection<Empty<Bytes>>) -> ConnectionUnavailable {
    let error: BoxError = poll_fn(|cx| Service::<http::Request<_>>::poll_ready(connection, cx))
        .await
        .expect_err("poll_ready fails");
    *error
        .downcast_ref::<ConnectionUnavailable>()
        .unwrap_or_else(|| panic!("a ConnectionUnavailable, not {error:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_goaway_poll_ready_says_goaway() {
    let server = H2Server::start("goaway").await;
    let mut connection = connect(&server).await;
    server.goaway();
    tokio::time::timeout(BOUND, connection.closed())
        .await
        .expect("the GOAWAY arrives within the bound");
    assert_eq!(
        ready_error(&mut connection).await,
        ConnectionUnavailable::GoAway
    );
    assert!(connection.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_connection_ended_poll_ready_says_closed() {
    let server = H2Server::start("killed").await;
    let mut connection = connect(&server).await;
    server.kill().await;
    tokio::time::timeout(BOUND, connection.closed())
        .await
        .expect("the end is noticed within the bound");
    assert_eq!(
        ready_error(&mut connection).await,
        ConnectionUnavailable::Closed
    );
}
