//! A server's graceful goodbye costs no request: a tonic client, through the layer, against a
//! tonic server shut down gracefully (`GOAWAY`, in-flight calls finished) while requests run,
//! with a catalog that moves the client to another replica.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

#[path = "support/grpc.rs"]
mod grpc;

use grpc::SERVICE;
use persistent_connection::{PersistentConnectionLayer, http::Http2Connector};
use tokio::{sync::oneshot, task::JoinSet, time::timeout};
use tonic::{body::Body, transport::server::TcpIncoming};
use tonic_health::{
    ServingStatus,
    pb::{health_check_response::ServingStatus as Status, health_client::HealthClient},
};

/// The bound on every wait: a test that reaches it fails.
const GUARD: Duration = Duration::from_secs(10);

/// A tonic-health server on a fresh loopback port that counts the requests it serves and
/// shuts down gracefully when told.
struct Replica {
    address: SocketAddr,
    served: Arc<AtomicUsize>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let (_reporter, health) = grpc::health(ServingStatus::Serving).await;
        let served = Arc::new(AtomicUsize::new(0));
        let counter = served.clone();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .layer(tonic::service::InterceptorLayer::new(
                    move |request: tonic::Request<()>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        Ok(request)
                    },
                ))
                .add_service(health)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = signal.await;
                })
                .await
                .expect("the server runs until its graceful shutdown");
        });
        Self {
            address,
            served,
            shutdown: Some(shutdown),
            task,
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Starts the graceful shutdown (GOAWAY to every connection; in-flight calls finish).
    fn shut_down(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// 16 loops of unary calls run while replica A shuts down gracefully and the catalog points to
/// replica B: not one call fails, B serves the calls after the switch, and the layer counts
/// the goodbye as a graceful close, not a failed attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_server_shut_down_gracefully_costs_no_call() {
    let mut a = Replica::start().await;
    let b = Replica::start().await;
    let catalog = Arc::new(Mutex::new(a.address));
    let svc = PersistentConnectionLayer::new({
        let catalog = catalog.clone();
        move || {
            let address = *catalog.lock().unwrap();
            async move { Ok::<_, std::convert::Infallible>(address) }
        }
    })
    .server_name(SERVICE)
    // A delay longer than the test's guard: waiting it out after the goodbye would fail.
    .retry_delay(|| Duration::from_secs(30))
    .jitter(0.0)
    .http2(Http2Connector::<Body>::new());
    let handle = svc.handle();

    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = JoinSet::new();
    for _ in 0..16 {
        let mut client = HealthClient::new(svc.clone());
        let stop = stop.clone();
        loops.spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            while !stop.load(Ordering::SeqCst) && ok + failed.len() < 1_000_000 {
                match timeout(GUARD, client.check(grpc::request())).await {
                    Ok(Ok(response)) => {
                        assert_eq!(response.into_inner().status(), Status::Serving);
                        ok += 1;
                    }
                    Ok(Err(status)) => failed.push(status.to_string()),
                    Err(_) => failed.push("timed out".to_owned()),
                }
            }
            (ok, failed)
        });
    }

    let wait_until = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
        timeout(GUARD, async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting until {what}"));
    };
    let served_by_a = a.served.clone();
    wait_until(
        "A served 500 calls",
        Box::new(move || served_by_a.load(Ordering::SeqCst) >= 500),
    )
    .await;
    *catalog.lock().unwrap() = b.address;
    a.shut_down();
    let served_by_b = b.served.clone();
    wait_until(
        "B served 500 calls",
        Box::new(move || served_by_b.load(Ordering::SeqCst) >= 500),
    )
    .await;
    stop.store(true, Ordering::SeqCst);

    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(outcome) = loops.join_next().await {
        let (n, errors) = outcome.expect("a loop panicked");
        ok += n;
        failed.extend(errors);
    }
    timeout(GUARD, &mut a.task)
        .await
        .expect("A's graceful shutdown finished")
        .unwrap();
    let stats = handle.stats();
    eprintln!(
        "{ok} calls succeeded, {} failed; A served {}, B served {}; {} graceful closes, {} replayed",
        failed.len(),
        a.served(),
        b.served(),
        stats.graceful_closes,
        stats.replayed_requests,
    );
    assert!(
        failed.is_empty(),
        "calls failed: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(a.served() >= 500 && b.served() >= 500);
    assert_eq!(stats.failed_attempts, 0, "{stats:?}");
    assert_eq!(stats.graceful_closes, 1, "{stats:?}");
    handle.close().await;
}
