//! Load balancing over persistent connections, on loopback, in about 14 seconds.
//!
//! Three line servers (`a`, `b`, `c`) answer `ping N` with `<name>: pong N` after 5, 10 and
//! 20 ms, one request at a time per connection. The client keeps one persistent connection
//! per server, counts each one's requests in flight (`tower::load::PendingRequests`), and
//! spreads its requests over them with tower's power-of-two-choices balancer
//! (`tower::balance::p2c::Balance`): of two endpoints picked at random, the less loaded one gets
//! the request, so the faster servers get more. The demo sends 160 requests a second, each in its
//! own task, through a `Buffer` above the balancer.
//!
//! At 4 s the demo kills `b` (it stops accepting and closes its sockets). The few requests in
//! flight on it fail; its close signal tells the driver at once, and the endpoint turns
//! `Pending`, so the balancer routes around it (without evicting it) while the driver retries
//! every half second (a failure like the previous one is not reported again). At 8 s `b`
//! restarts on the same port: the driver reconnects, the endpoint turns ready, and the balancer
//! sends to it again. The events, each failed request and a line per second (requests answered
//! by each server, failed, timed out) are printed, and a summary ends the run.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example balance
//! ```
//!
//! With `RUST_LOG=persistent_connection=debug` the crate's own log lines are printed too.

use std::{
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use persistent_connection::{BoxError, Event, PersistentConnectionLayer};
use tokio::{
    task::JoinSet,
    time::{Instant, interval_at, timeout},
};
use tower::{
    Service, ServiceBuilder, ServiceExt,
    balance::p2c::Balance,
    buffer::Buffer,
    discover::ServiceList,
    load::{CompleteOnResponse, PendingRequests},
    service_fn,
};

/// The servers: name, and how long each reply waits (in ms).
const SERVERS: [(&str, u64); 3] = [("a", 5), ("b", 10), ("c", 20)];
/// The server killed after [`KILL_AT`] seconds and restarted after [`RESTART_AT`].
const VICTIM: usize = 1;
const KILL_AT: u64 = 4;
const RESTART_AT: u64 = 8;
const SECONDS: u64 = 14;
const PER_SECOND: u64 = 160;
const REQUEST_EVERY: Duration = Duration::from_nanos(1_000_000_000 / PER_SECOND);
/// A request neither answered nor failed by then counts as timed out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `println!`, after the time since the start.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:6.3}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[path = "support/line.rs"]
mod line;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    LazyLock::force(&START);

    let mut servers = Vec::new();
    for (name, delay_ms) in SERVERS {
        let server = line::Server::start(name).await?;
        server.set_delay(Duration::from_millis(delay_ms));
        log!(
            "** {name} started on {}, replies after {delay_ms} ms",
            server.address()
        );
        servers.push(server);
    }

    // One persistent connection per server; the handles are kept to close them at the end.
    let mut handles = Vec::new();
    let mut endpoints = Vec::new();
    for server in &servers {
        let name = server.name();
        let connection = ServiceBuilder::new()
            .layer(
                PersistentConnectionLayer::fixed_address(server.address())
                    .server_name(name)
                    .retry_delay(|| Duration::from_millis(500))
                    .close_signal(|connection: &line::Connection| connection.closed())
                    .on_event(move |event: &Event<_, _>| log!("{name}: event: {event:?}")),
            )
            .service(service_fn(line::connect));
        handles.push(connection.handle());
        // Errors name their server, as replies do.
        let connection = connection.map_err(move |e| -> BoxError { format!("{name}: {e}").into() });
        endpoints.push(PendingRequests::new(
            connection,
            CompleteOnResponse::default(),
        ));
    }
    // The `Buffer` goes above the balancer, never between it and its endpoints: a `Buffer` is
    // ready whenever it has room, so the balancer would no longer see that an endpoint is down.
    let client = Buffer::new(Balance::new(ServiceList::new(endpoints)), 64);

    let stats = Arc::new(Mutex::new(Stats::default()));
    let mut requests = JoinSet::new();
    let mut ticks = interval_at(*START + REQUEST_EVERY, REQUEST_EVERY);
    let mut n = 0;
    for t in 1..=SECONDS {
        for _ in 0..PER_SECOND {
            ticks.tick().await;
            n += 1;
            requests.spawn(request(client.clone(), n, stats.clone()));
        }
        if t < SECONDS {
            stats.lock().unwrap().status(t);
        }
        let victim = &mut servers[VICTIM];
        if t == KILL_AT {
            log!("** killing {} (on {})", victim.name(), victim.address());
            victim.kill();
        } else if t == RESTART_AT {
            victim.restart().await?;
            log!("** {} restarted on {}", victim.name(), victim.address());
        }
    }
    // Every request ends by itself: answered, failed, or timed out.
    requests.join_all().await;
    {
        let mut stats = stats.lock().unwrap();
        stats.status(SECONDS);
        stats.summary(n);
    }

    for handle in handles {
        handle.close().await;
    }
    log!("closed");
    Ok(())
}

/// Sends `ping n` and records how it ended; gives up after [`REQUEST_TIMEOUT`].
async fn request<S>(mut client: S, n: u64, stats: Arc<Mutex<Stats>>)
where
    S: Service<String, Response = String, Error = BoxError>,
{
    let outcome = timeout(REQUEST_TIMEOUT, async {
        client.ready().await?.call(format!("ping {n}")).await
    })
    .await;
    let mut stats = stats.lock().unwrap();
    match outcome {
        Ok(Ok(reply)) => {
            let server = server_of(&reply).expect("every reply names its server");
            stats.count(|tally| tally.ok[server] += 1);
            let elapsed = START.elapsed();
            if server == VICTIM && elapsed.as_secs() >= RESTART_AT && stats.back_at.is_none() {
                stats.back_at = Some(elapsed.as_secs_f64());
            }
        }
        Ok(Err(error)) => {
            log!("request {n} failed: {error}");
            stats.count(|tally| tally.failed += 1);
            if let Some(server) = server_of(&error.to_string()) {
                stats.failed_on[server] += 1;
            }
        }
        Err(_) => {
            log!("request {n} timed out after {REQUEST_TIMEOUT:?}");
            stats.count(|tally| tally.timed_out += 1);
        }
    }
}

/// The index in [`SERVERS`] of the server that `text` (a reply or an error) starts with.
fn server_of(text: &str) -> Option<usize> {
    let name = text.split(':').next()?;
    SERVERS.iter().position(|&(server, _)| server == name)
}

// === Bookkeeping ===

/// Requests answered per server, failed, and timed out.
#[derive(Default)]
struct Tally {
    ok: [u64; SERVERS.len()],
    failed: u64,
    timed_out: u64,
}

#[derive(Default)]
struct Stats {
    /// Since the latest status line.
    second: Tally,
    total: Tally,
    /// Failed requests per server (when the error names one).
    failed_on: [u64; SERVERS.len()],
    /// When the victim answered again after its restart, in seconds since the start.
    back_at: Option<f64>,
}

impl Stats {
    /// Counts a request that ended, in this second's tally and in the total.
    fn count(&mut self, add: impl Fn(&mut Tally)) {
        add(&mut self.second);
        add(&mut self.total);
    }

    /// Prints the requests that ended since the previous status line.
    fn status(&mut self, t: u64) {
        let second = std::mem::take(&mut self.second);
        let mut line = format!("t={t:<2}s ");
        for ((name, _), ok) in SERVERS.iter().zip(second.ok) {
            line += &format!(" {name}={ok:<3}");
        }
        let (failed, timed_out) = (second.failed, second.timed_out);
        println!("{line}  failed={failed} timed_out={timed_out}");
    }

    fn summary(&self, sent: u64) {
        let (ok, failed, timed_out) = (self.total.ok, self.total.failed, self.total.timed_out);
        println!("\nper server:");
        for (i, (name, delay_ms)) in SERVERS.iter().enumerate() {
            let (ok, failed) = (ok[i], self.failed_on[i]);
            println!("  {name} (replies after {delay_ms:>2} ms): ok={ok:<5} failed={failed}");
        }
        let ok: u64 = ok.iter().sum();
        println!("sent={sent} ok={ok} failed={failed} timed_out={timed_out}");
        let ended = ok + failed + timed_out;
        println!("accounted for: ok + failed + timed out = {ended} of {sent}");
        let victim = SERVERS[VICTIM].0;
        let back = match self.back_at {
            Some(t) => format!("answered again from {t:.2} s, once its driver had reconnected"),
            None => "never answered again".to_owned(),
        };
        println!(
            "\n{victim} was down from {KILL_AT} s to {RESTART_AT} s: {} request(s) in flight on it \
             failed, the balancer sent the others to the servers still up, and {victim} {back}.",
            self.failed_on[VICTIM]
        );
    }
}
