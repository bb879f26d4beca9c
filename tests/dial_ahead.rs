//! Dialing ahead of a server's request limit (`Http2Connector::dial_ahead`), against a real
//! nginx on 127.0.0.1 with `keepalive_requests 20` (see `support/nginx.rs`; skipped with one
//! line when nginx is not installed, unless `REQUIRE_REAL_SERVERS=1`).
//!
//! After two goodbyes at the same count the connector knows the limit: each connection from
//! the third on is retired at exactly 20 requests (so nginx never receives a request past its
//! limit, and refuses none), and each one from the fourth on was dialed while its predecessor
//! still served, and taken ready. With `dial_ahead(false)` nothing of this happens.
//!
//! A binary of its own: the log recorder it installs records every debug line of the crate,
//! which must not weigh on the throughput runs of `goodbye_nginx`.

#[path = "support/logs.rs"]
mod logs;
#[path = "support/nginx.rs"]
mod nginx;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use logs::LogRecorder;
use nginx::{Config, Nginx};
use persistent_connection::{
    BoxError, PersistentConnectionLayer, http::Http2Connector, observe::Stats,
};
use tokio::{task::JoinSet, time::Instant};
use tower::{Service, ServiceExt};

/// nginx's request limit per connection in these runs.
const LIMIT: u32 = 20;
/// Concurrent request loops: each has at most one request in flight.
const LOOPS: u64 = 4;
/// Connections a run goes through (goodbyes + 1).
const CONNECTIONS: u64 = 10;
/// Bounds: on the whole run, on one request.
const RUN_BOUND: Duration = Duration::from_secs(60);
const REQUEST_BOUND: Duration = Duration::from_secs(5);

/// One test at a time: the log lines are counted per run.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DIALING: &str = "dialing the next connection ahead of the server's request limit";
const TAKING: &str = "taking the connection dialed ahead of the request limit";
const RETIRING: &str = "the connection reached the server's request limit: retiring it";

struct Outcome {
    ok: u64,
    failed: u64,
    stats: Stats,
    dialing: usize,
    taking: usize,
    retiring: usize,
}

/// [`LOOPS`] loops of `GET /` through one layer over `connector`, until the layer has made
/// [`CONNECTIONS`] connections.
async fn run(connector: Http2Connector<Empty<Bytes>>) -> Option<Outcome> {
    let logs = LogRecorder::global();
    let count = |message: &str| {
        logs.records()
            .iter()
            .filter(|r| r.message == message)
            .count()
    };
    let nginx =
        Nginx::start(Config::h2c().directive(&format!("keepalive_requests {LIMIT};"))).await?;
    let before = (count(DIALING), count(TAKING), count(RETIRING));
    let svc = PersistentConnectionLayer::fixed_address(nginx.addr())
        .server_name("nginx")
        .http2(connector);
    let handle = svc.handle();
    tokio::time::timeout(REQUEST_BOUND, handle.connected())
        .await
        .expect("connected to nginx within the bound")
        .expect("not closed");

    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deadline = Instant::now() + RUN_BOUND;
    let mut loops = JoinSet::new();
    for _ in 0..LOOPS {
        let (mut svc, handle, ok, failed) =
            (svc.clone(), handle.clone(), ok.clone(), failed.clone());
        loops.spawn(async move {
            while handle.stats().connections < CONNECTIONS && Instant::now() < deadline {
                let exchange = async {
                    let request = Request::get("/").body(Empty::new())?;
                    let response = svc.ready().await?.call(request).await?;
                    let status = response.status();
                    response.into_body().collect().await?;
                    Ok::<_, BoxError>(status)
                };
                match tokio::time::timeout(REQUEST_BOUND, exchange).await {
                    Ok(Ok(StatusCode::OK)) => ok.fetch_add(1, Ordering::Relaxed),
                    outcome => {
                        eprintln!("request failed: {outcome:?}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        });
    }
    while let Some(result) = loops.join_next().await {
        result.expect("a request loop panicked");
    }
    let stats = handle.stats();
    handle.close().await;
    let outcome = Outcome {
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        stats,
        dialing: count(DIALING) - before.0,
        taking: count(TAKING) - before.1,
        retiring: count(RETIRING) - before.2,
    };
    println!(
        "requests {} failed {}; connections {} graceful closes {} refused by nginx (resent) {}; \
         dialed ahead {} taken {} retired {}",
        outcome.ok,
        outcome.failed,
        outcome.stats.connections,
        outcome.stats.graceful_closes,
        outcome.stats.replayed_requests,
        outcome.dialing,
        outcome.taking,
        outcome.retiring,
    );
    Some(outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_request_limit_is_dialed_ahead_of_and_never_exceeded() {
    let _serial = SERIAL.lock().await;
    let Some(outcome) = run(Http2Connector::new()).await else {
        return;
    };
    let connections = outcome.stats.connections;
    assert!(
        connections >= CONNECTIONS,
        "the run ended at its time bound: {connections} connections"
    );
    assert_eq!(outcome.failed, 0, "requests failed");
    assert_eq!(outcome.stats.failed_attempts, 0);
    // Only the two goodbyes that teach the limit can see requests past it: at most one from
    // each other loop.
    assert!(
        outcome.stats.replayed_requests <= 2 * (LOOPS - 1),
        "nginx refused {} requests sent past its limit after the limit was known",
        outcome.stats.replayed_requests
    );
    // From the third connection on, each one retires at the limit (the last one may be
    // closed by the end of the run first)...
    let known = usize::try_from(connections - 2).unwrap();
    assert!(
        outcome.retiring + 1 >= known,
        "{} of {known} connections retired at the limit",
        outcome.retiring
    );
    // ... and from the fourth on, each one was dialed ahead and taken ready.
    assert_eq!(outcome.taking, known - 1, "connections taken ready");
    assert!(outcome.dialing >= outcome.taking);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_ahead_off_dials_nothing_ahead_and_retires_nothing() {
    let _serial = SERIAL.lock().await;
    let Some(outcome) = run(Http2Connector::new().dial_ahead(false)).await else {
        return;
    };
    assert!(outcome.stats.connections >= CONNECTIONS);
    assert_eq!(outcome.failed, 0, "requests failed");
    assert_eq!(
        (outcome.dialing, outcome.taking, outcome.retiring),
        (0, 0, 0)
    );
}
