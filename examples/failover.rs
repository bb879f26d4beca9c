//! Failover between replicas, on loopback, in about 16 seconds.
//!
//! Three replica servers (`replica-a`, `replica-b`, `replica-c`) speak a tiny line protocol
//! (`ping N` is answered with `replica-x: pong N`) and publish their address in an in-process
//! catalog. The client keeps **one** persistent connection, whose address comes from a catalog
//! lookup before every attempt, and sends a request every 100 ms.
//!
//! Every four seconds the demo kills the replica in use (it leaves the catalog and closes its
//! sockets), and two seconds later restarts it on a *new* port. The connection's close signal
//! tells the driver at once; the driver looks the catalog up again and connects to the next
//! live replica. Only a request caught in the very moment of a kill fails. The events, each
//! failed request and a status line per second are printed, and a summary ends the run.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example failover
//! ```
//!
//! With `RUST_LOG=persistent_connection=debug` the crate's own log lines are printed too; they
//! say why each connection ended.

use std::{
    io,
    net::SocketAddr,
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use persistent_connection::{BoxError, Event, PersistentConnectionLayer};
use tokio::{
    task::JoinSet,
    time::{Instant, interval_at, timeout_at},
};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

const REQUEST_EVERY: Duration = Duration::from_millis(100);
const REQUESTS: u64 = 160;
/// A request neither answered nor failed by then counts as timed out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `println!`, after the time since the start.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:6.3}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[path = "support/line.rs"]
mod line;

use line::{Connection, Server};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    LazyLock::force(&START);

    let catalog = Catalog::default();
    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b", "replica-c"] {
        replicas.push(Replica::start(name, &catalog).await?);
    }

    let stats = Arc::new(Mutex::new(Stats::default()));
    let layer = PersistentConnectionLayer::new({
        let catalog = catalog.clone();
        move || {
            let catalog = catalog.clone();
            async move { catalog.lookup() }
        }
    })
    .server_name("replicas")
    .retry_delay(|| Duration::from_millis(500))
    .connect_timeout(Duration::from_secs(1))
    .close_signal(|connection: &Connection| connection.closed())
    .on_event({
        let (catalog, stats) = (catalog.clone(), stats.clone());
        move |event: &Event<SocketAddr, Connection>| match event {
            Event::Connected(connection) => {
                let replica = format!(
                    "{} ({})",
                    catalog.name_of(connection.peer()),
                    connection.peer()
                );
                log!("event: Connected to {replica}");
                stats.lock().unwrap().connections.push(replica);
            }
            other => log!("event: {other:?}"),
        }
    });
    let client = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(line::connect));
    let handle = client.handle();

    let mut requests = JoinSet::new();
    let mut killed = Vec::new();
    let mut ticks = interval_at(*START + REQUEST_EVERY, REQUEST_EVERY);
    for n in 1..=REQUESTS {
        ticks.tick().await;
        if n % 10 == 0 {
            let second = n / 10;
            let in_use = stats.lock().unwrap().status(second);
            match second {
                // Kill the replica in use...
                4 | 8 | 12 => {
                    if let Some(i) = replicas
                        .iter()
                        .position(|r| Some(r.name()) == in_use.as_deref())
                    {
                        let replica = replicas.swap_remove(i);
                        killed.push(replica.name());
                        replica.kill(&catalog);
                    }
                }
                // ...and bring it back two seconds later, on a new port.
                6 | 10 | 14 => {
                    if let Some(name) = killed.pop() {
                        replicas.push(Replica::start(name, &catalog).await?);
                    }
                }
                _ => {}
            }
        }
        requests.spawn(ping(client.clone(), n, stats.clone()));
    }
    // Every request ends by itself: answered, failed, or timed out.
    requests.join_all().await;
    stats.lock().unwrap().summary(REQUESTS);
    let driver = handle.stats();
    println!(
        "driver: attempts={} failed_attempts={} connections={} disconnections={} last_error={}",
        driver.attempts,
        driver.failed_attempts,
        driver.connections,
        driver.disconnections,
        driver.last_error.map_or("none".into(), |e| e.to_string()),
    );

    handle.close().await;
    log!("closed");
    Ok(())
}

// === The client side ===

/// Sends `ping n` and records the outcome; gives up after [`REQUEST_TIMEOUT`].
async fn ping<S>(mut client: S, n: u64, stats: Arc<Mutex<Stats>>)
where
    S: Service<String, Response = String, Error = BoxError>,
{
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    stats.lock().unwrap().waiting += 1;
    let ready = timeout_at(deadline, client.ready()).await;
    stats.lock().unwrap().waiting -= 1;
    let outcome = match ready {
        Ok(Ok(client)) => timeout_at(deadline, client.call(format!("ping {n}"))).await,
        Ok(Err(error)) => Ok(Err(error)),
        Err(elapsed) => Err(elapsed),
    };
    let mut stats = stats.lock().unwrap();
    match outcome {
        Ok(Ok(reply)) => {
            stats.ok += 1;
            stats.replica = reply.split(':').next().map(str::to_owned);
        }
        Ok(Err(error)) => {
            stats.failed += 1;
            log!("request {n} failed: {error}");
        }
        Err(_) => {
            stats.timed_out += 1;
            log!("request {n} timed out after {REQUEST_TIMEOUT:?}");
        }
    }
}

// === The replica side ===

/// Where the replicas are: each registers when it starts and deregisters when killed.
#[derive(Clone, Default)]
struct Catalog(Arc<Mutex<Vec<(&'static str, SocketAddr)>>>);

impl Catalog {
    /// The address of a live replica: the first one registered.
    fn lookup(&self) -> Result<SocketAddr, BoxError> {
        let replicas = self.0.lock().unwrap();
        replicas
            .first()
            .map(|&(_, address)| address)
            .ok_or_else(|| "no replica is registered".into())
    }

    fn name_of(&self, address: SocketAddr) -> &'static str {
        let replicas = self.0.lock().unwrap();
        replicas
            .iter()
            .find(|&&(_, a)| a == address)
            .map_or("unregistered", |&(name, _)| name)
    }
}

/// A running replica: a line server that is registered in the catalog.
struct Replica {
    server: Server,
}

impl Replica {
    /// Starts a server on a fresh loopback port, and registers it in the catalog.
    async fn start(name: &'static str, catalog: &Catalog) -> io::Result<Self> {
        let server = Server::start(name).await?;
        catalog.0.lock().unwrap().push((name, server.address()));
        log!("** {name} started on {}", server.address());
        Ok(Self { server })
    }

    fn name(&self) -> &'static str {
        self.server.name()
    }

    /// Leaves the catalog, stops accepting, and closes every open connection.
    fn kill(mut self, catalog: &Catalog) {
        log!("** killing {} (on {})", self.name(), self.server.address());
        let name = self.name();
        catalog.0.lock().unwrap().retain(|&(n, _)| n != name);
        self.server.kill();
    }
}

// === Bookkeeping ===

#[derive(Default)]
struct Stats {
    ok: u64,
    failed: u64,
    timed_out: u64,
    /// Requests waiting for a connection right now.
    waiting: u64,
    /// The replica that answered the latest request.
    replica: Option<String>,
    /// Every connection made, in order.
    connections: Vec<String>,
}

impl Stats {
    /// Prints the status line; returns the replica in use.
    fn status(&self, second: u64) -> Option<String> {
        let replica = self.replica.as_deref().unwrap_or("none");
        println!(
            "t={second}s ok={} failed={} timed_out={} waiting={} replica={replica}",
            self.ok, self.failed, self.timed_out, self.waiting
        );
        self.replica.clone()
    }

    fn summary(&self, sent: u64) {
        let (ok, failed, timed_out) = (self.ok, self.failed, self.timed_out);
        println!("\nsent={sent} ok={ok} failed={failed} timed_out={timed_out}");
        println!(
            "accounted for: ok + failed + timed out = {} of {sent}",
            ok + failed + timed_out
        );
        println!("reconnects: {}", self.connections.len().saturating_sub(1));
        println!("replicas used: {}", self.connections.join(" -> "));
    }
}
