//! A tonic client over a persistent connection, following its server to a new port.
//!
//! A local tonic-health server reports `billing` as serving and publishes its address in an
//! in-process catalog. A generated `HealthClient` runs directly over the persistent HTTP/2
//! connection (server name `billing`, which is also the `:authority` of its requests) and
//! calls `check` every 100 ms for 8 seconds.
//!
//! At 3 s the server is killed (its sockets close); at 4 s it comes back on a *new* port,
//! published in the catalog, which the connection looks up before every attempt. Calls made
//! during the outage do not fail: they wait for the connection and complete once the server
//! is back. The connection's events, a status line per second and a summary are printed; the
//! demo then closes the persistent connection and exits.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example tonic_client
//! ```

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use persistent_connection::{
    BoxError, Event, PersistentConnection, PersistentConnectionLayer,
    http::{Http2Connection, Http2Connector},
};
use tokio::{
    sync::oneshot,
    task::JoinSet,
    time::{Instant, interval_at, sleep_until, timeout},
};
use tonic::{Status, body::Body, transport::server::TcpIncoming};
use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, health_client::HealthClient},
};

const CALL_EVERY: Duration = Duration::from_millis(100);
const CALLS: u32 = 80;
/// When the server is killed, and when it comes back on a new port (between two calls).
const KILL_AT: Duration = Duration::from_millis(3050);
const RESTART_AT: Duration = Duration::from_millis(4050);
/// A call neither answered nor failed by then counts as failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

type Client = HealthClient<PersistentConnection<Http2Connection<Body>>>;

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `println!`, after the time since the start.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:6.3}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    LazyLock::force(&START);
    let server = Server::start(TcpListener::bind("127.0.0.1:0")?)?;
    log!("** server started on {}", server.address);
    // The catalog: where `billing` is now, if anywhere.
    let catalog = Arc::new(Mutex::new(Some(server.address)));

    let svc = PersistentConnectionLayer::new({
        let catalog = catalog.clone();
        move || {
            let address = *catalog.lock().unwrap();
            async move { address.ok_or("billing is not in the catalog") }
        }
    })
    .server_name("billing")
    .retry_delay(|| Duration::from_millis(300))
    .connect_timeout(Duration::from_secs(1))
    .on_event(|event: &Event<SocketAddr, Http2Connection<Body>>| log!("event: {event:?}"))
    .http2(Http2Connector::new());
    let handle = svc.handle();
    let client = HealthClient::new(svc);

    // Kill the server, then bring it back on a new port and publish that in the catalog.
    let chaos = tokio::spawn({
        let catalog = catalog.clone();
        async move {
            sleep_until(*START + KILL_AT).await;
            // Reserve the next port first, so the restarted server cannot get the old one.
            let next = TcpListener::bind("127.0.0.1:0")?;
            log!("** killing the server on {}", server.address);
            *catalog.lock().unwrap() = None;
            server.kill().await;
            sleep_until(*START + RESTART_AT).await;
            let server = Server::start(next)?;
            log!("** server restarted on {}", server.address);
            *catalog.lock().unwrap() = Some(server.address);
            Ok::<_, BoxError>(server)
        }
    });

    let stats = Arc::new(Mutex::new(Stats::default()));
    let mut calls = JoinSet::new();
    let mut ticks = interval_at(*START + CALL_EVERY, CALL_EVERY);
    for n in 1..=CALLS {
        ticks.tick().await;
        if n % 10 == 0 {
            let stats = stats.lock().unwrap();
            let waiting = n - 1 - stats.ok - stats.failed;
            let (second, ok, failed) = (n / 10, stats.ok, stats.failed);
            println!("t={second}s ok={ok} failed={failed} waiting={waiting}");
        }
        calls.spawn(check(client.clone(), n, stats.clone()));
    }
    // Every call ends by itself: answered, failed, or timed out.
    calls.join_all().await;
    {
        let stats = stats.lock().unwrap();
        println!("\ncalls={CALLS} ok={} failed={}", stats.ok, stats.failed);
        println!("slowest call: {:?}", stats.slowest);
    }

    handle.close().await;
    log!("persistent connection closed");
    chaos.await??.kill().await;
    Ok(())
}

#[derive(Default)]
struct Stats {
    ok: u32,
    failed: u32,
    slowest: Duration,
}

/// Calls `check` once and records the outcome; gives up after [`CALL_TIMEOUT`].
async fn check(mut client: Client, n: u32, stats: Arc<Mutex<Stats>>) {
    let started = Instant::now();
    let request = HealthCheckRequest {
        service: "billing".into(),
    };
    let outcome = timeout(CALL_TIMEOUT, client.check(request))
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer in time")));
    let mut stats = stats.lock().unwrap();
    stats.slowest = stats.slowest.max(started.elapsed());
    match outcome {
        Ok(_) => stats.ok += 1,
        Err(status) => {
            stats.failed += 1;
            log!("call {n} failed: {status}");
        }
    }
}

/// A tonic-health server on its own thread and runtime, so that killing it closes every
/// socket it has, as if its process had died.
struct Server {
    address: SocketAddr,
    kill: oneshot::Sender<()>,
    dead: oneshot::Receiver<()>,
}

impl Server {
    fn start(listener: TcpListener) -> Result<Self, BoxError> {
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let incoming = {
            let _context = runtime.enter();
            TcpIncoming::from(tokio::net::TcpListener::from_std(listener)?)
        };
        let (kill, killed) = oneshot::channel::<()>();
        let (died, dead) = oneshot::channel();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let (reporter, health) = tonic_health::server::health_reporter();
                reporter
                    .set_service_status("billing", ServingStatus::Serving)
                    .await;
                let serve = tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming(incoming);
                tokio::select! {
                    Err(error) = serve => log!("** the server failed: {error}"),
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops every connection task, closing its socket.
            drop(runtime);
            let _ = died.send(());
        });
        Ok(Self {
            address,
            kill,
            dead,
        })
    }

    /// Stops the server; returns once every socket it had is closed.
    async fn kill(self) {
        let _ = self.kill.send(());
        let _ = self.dead.await;
    }
}
