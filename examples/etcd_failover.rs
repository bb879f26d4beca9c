//! Failover between replicas found in etcd, on loopback, in about 10 seconds.
//!
//! The example starts its own etcd (a single member on free ports of 127.0.0.1, its data in a
//! temporary directory) and three HTTP/2 replicas (`replica-a`, `replica-b`, `replica-c`),
//! each of which publishes its address with `discovery::etcd::register` under a lease of 2 s.
//! Each replica runs on a runtime of its own, as if it were a process of its own.
//!
//! The client keeps **one** persistent HTTP/2 connection, whose address comes from a
//! `discovery::etcd::Catalog` lookup before every attempt, and sends a request every 100 ms,
//! printing which replica answered. At 3 s the demo kills the replica in use: its runtime is
//! shut down, so its sockets close and its lease's keep-alive stops without a revoke, as when
//! a process dies. The client moves at once to the next replica in the catalog; the dead
//! replica's key stays listed until its lease lapses, about 2 s later. At the end the other
//! replicas deregister (their keys go at once) and etcd is stopped.
//!
//! Needs the `etcd` binary (Debian: `apt-get install etcd-server`; or `ETCD=/path/to/etcd`).
//! Run it with:
//!
//! ```text
//! cargo run --example etcd_failover --features etcd
//! ```
//!
//! With `RUST_LOG=persistent_connection=debug` the crate's own log lines are printed too.

use std::{
    convert::Infallible,
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, LazyLock, Mutex},
    thread,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use persistent_connection::{
    BoxError, Event, PersistentConnectionLayer,
    discovery::etcd::{Catalog, register},
    http::{Http2Connection, Http2Connector},
};
use tokio::{
    sync::oneshot,
    time::{Instant, MissedTickBehavior, interval, timeout},
};
use tower::{Service, ServiceExt};

const PREFIX: &str = "/services/greeter/";
const TTL: Duration = Duration::from_secs(2);
const REQUEST_EVERY: Duration = Duration::from_millis(100);
const REQUESTS: u32 = 90;
/// The request at which the replica in use is killed (at about 3 s).
const KILL_AT: u32 = 30;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// `println!`, after the time since the start.
macro_rules! log {
    ($($arg:tt)*) => {
        println!("[{:6.3}s] {}", START.elapsed().as_secs_f64(), format_args!($($arg)*))
    };
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    LazyLock::force(&START);

    let Some(binary) = etcd_binary() else {
        eprintln!(
            "etcd is not installed: install it (Debian: apt-get install etcd-server), or set \
             ETCD=/path/to/etcd"
        );
        std::process::exit(1);
    };
    let mut etcd = Etcd::start(binary).await?;
    log!(
        "** etcd on {} (data in {})",
        etcd.endpoint(),
        etcd.dir.display()
    );

    let mut replicas = Vec::new();
    for name in ["replica-a", "replica-b", "replica-c"] {
        let replica = Replica::start(name, etcd.endpoint()).await?;
        log!(
            "** {name} on {} registered as {}",
            replica.addr,
            replica.key
        );
        replicas.push(replica);
    }

    let catalog = Catalog::new([etcd.endpoint()], PREFIX)?;
    let listings = Arc::new(Mutex::new(Vec::new()));
    let watcher = tokio::spawn(watch_catalog(catalog.clone(), listings.clone()));
    let mut client = PersistentConnectionLayer::new(catalog)
        .server_name("greeter")
        .retry_delay(|| Duration::from_millis(300))
        .connect_timeout(Duration::from_secs(2))
        .on_event(
            |event: &Event<String, Http2Connection<Empty<Bytes>>>| match event {
                Event::Connected(_) => log!("event: Connected"),
                other => log!("event: {other:?}"),
            },
        )
        .http2(Http2Connector::new());
    let handle = client.handle();

    let (mut ok, mut failed) = (0u32, 0u32);
    let mut in_use: Option<String> = None;
    let mut used = Vec::<String>::new();
    let mut killed: Option<(&str, SocketAddr, Instant)> = None;
    let mut moved_after = None;
    let mut ticks = interval(REQUEST_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for n in 1..=REQUESTS {
        ticks.tick().await;
        if n == KILL_AT {
            if let Some(i) = replicas
                .iter()
                .position(|r| Some(r.name) == in_use.as_deref())
            {
                let replica = replicas.swap_remove(i);
                log!(
                    "** killing {} (no deregistration: its lease will lapse)",
                    replica.name
                );
                killed = Some((replica.name, replica.addr, Instant::now()));
                replica.kill().await;
            }
        }
        let request = Request::get(format!("/hello/{n}")).body(Empty::new())?;
        let exchange = async {
            let response = client.ready().await?.call(request).await?;
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(String::from_utf8_lossy(&body).into_owned())
        };
        match timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => {
                ok += 1;
                let replica = answer.split(' ').next().unwrap_or_default().to_owned();
                log!("request {n}: {answer}");
                if let Some((dead, _, at)) = &killed {
                    if moved_after.is_none() && replica != *dead {
                        moved_after = Some(at.elapsed());
                    }
                }
                if used.last() != Some(&replica) {
                    used.push(replica.clone());
                }
                in_use = Some(replica);
            }
            Ok(Err(error)) => {
                failed += 1;
                log!("request {n} failed: {error}");
            }
            Err(_) => {
                failed += 1;
                log!("request {n} timed out after {REQUEST_TIMEOUT:?}");
            }
        }
    }

    handle.close().await;
    watcher.abort();
    for replica in replicas {
        let name = replica.name;
        replica.stop().await;
        log!("** {name} deregistered and stopped");
    }
    etcd.stop();
    log!("** etcd stopped");

    println!("\nsent={REQUESTS} ok={ok} failed={failed}");
    println!("replicas used: {}", used.join(" -> "));
    if let Some((dead, addr, at)) = killed {
        if let Some(after) = moved_after {
            println!("after {dead} was killed, another replica answered within {after:?}");
        }
        let listings = listings.lock().unwrap();
        let lapsed = listings
            .iter()
            .find(|(when, listed)| *when > at && !listed.contains(&addr.to_string()));
        match lapsed {
            Some((when, _)) => println!(
                "{dead}'s key left the catalog {:?} after the kill (lease TTL {TTL:?})",
                *when - at
            ),
            None => println!("{dead}'s key was still listed at the end"),
        }
    }
    let driver = handle.stats();
    println!(
        "driver: attempts={} failed_attempts={} connections={}",
        driver.attempts, driver.failed_attempts, driver.connections
    );
    Ok(())
}

/// The catalog's addresses each time they changed, with the time.
type Listings = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

/// Reads the catalog every 100 ms; prints it and keeps it in `listings` when it changed.
async fn watch_catalog(catalog: Catalog, listings: Listings) {
    let mut last = None;
    let mut ticks = interval(Duration::from_millis(100));
    loop {
        ticks.tick().await;
        let listed: Vec<String> = match catalog.replicas().await {
            Ok(replicas) => replicas.into_iter().map(|(_, address)| address).collect(),
            Err(error) => {
                log!("catalog: {error}");
                continue;
            }
        };
        if last.as_ref() != Some(&listed) {
            log!("catalog under {PREFIX}: [{}]", listed.join(", "));
            listings
                .lock()
                .unwrap()
                .push((Instant::now(), listed.clone()));
            last = Some(listed);
        }
    }
}

// === The replicas ===

/// How a replica ends.
enum End {
    /// Its runtime is shut down: no deregistration, the lease lapses.
    Kill,
    /// It deregisters, then stops.
    Stop,
}

/// An HTTP/2 server and its registration, on a runtime of their own on a thread of their own.
struct Replica {
    name: &'static str,
    addr: SocketAddr,
    key: String,
    end: oneshot::Sender<End>,
    thread: thread::JoinHandle<()>,
}

impl Replica {
    async fn start(name: &'static str, endpoint: String) -> Result<Self, BoxError> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (end, end_rx) = oneshot::channel();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the replica");
            let registration = runtime.block_on(async move {
                let started = async {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                    let addr = listener.local_addr()?;
                    tokio::spawn(serve(name, listener));
                    let registration = register([endpoint], PREFIX, addr, TTL).await?;
                    Ok::<_, BoxError>((addr, registration))
                };
                let (addr, registration) = match started.await {
                    Ok(started) => started,
                    Err(error) => {
                        let _ = ready_tx.send(Err(error.to_string()));
                        return None;
                    }
                };
                let _ = ready_tx.send(Ok((addr, registration.key().to_owned())));
                match end_rx.await {
                    Ok(End::Stop) => {
                        if let Err(error) = registration.deregister().await {
                            eprintln!("{name}: {error}");
                        }
                        None
                    }
                    Ok(End::Kill) | Err(_) => Some(registration),
                }
            });
            // The server's and the keep-alive's tasks end with the runtime...
            drop(runtime);
            // ...and a registration dropped outside any runtime revokes nothing.
            drop(registration);
        });
        let (addr, key) = timeout(Duration::from_secs(10), ready_rx)
            .await
            .map_err(|_| format!("{name} did not start within 10 s"))?
            .map_err(|_| format!("{name} did not start"))??;
        Ok(Self {
            name,
            addr,
            key,
            end,
            thread,
        })
    }

    async fn kill(self) {
        self.end_with(End::Kill).await;
    }

    async fn stop(self) {
        self.end_with(End::Stop).await;
    }

    /// Tells the replica how to end; returns once its thread has.
    async fn end_with(self, end: End) {
        let _ = self.end.send(end);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Answers every request with `"<name> <path>"`, over HTTP/2.
async fn serve(name: &'static str, listener: tokio::net::TcpListener) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let answer = service_fn(move |request: Request<Incoming>| async move {
                let body = format!("{name} {}", request.uri().path());
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            });
            let _ = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        });
    }
}

// === etcd ===

/// `$ETCD`, or `etcd` on `PATH`.
fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ETCD") {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// A single-member etcd on free ports of 127.0.0.1, with its data in a temporary directory.
struct Etcd {
    dir: PathBuf,
    client_port: u16,
    process: Option<Child>,
}

impl Etcd {
    async fn start(binary: PathBuf) -> Result<Self, BoxError> {
        let dir = std::env::temp_dir().join(format!(
            "persistent-connection-etcd-failover-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let process = Command::new(binary)
            .arg("--name=demo")
            .arg(format!("--data-dir={}", dir.join("data").display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=demo={peer}"))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("etcd.log"))?)
            .spawn()?;
        let mut etcd = Self {
            dir,
            client_port,
            process: Some(process),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !etcd.healthy() {
            let exited = etcd.process.as_mut().map(Child::try_wait);
            if let Some(Ok(Some(status))) = exited {
                etcd.process = None;
                return Err(format!("etcd exited ({status}); see {}", etcd.log()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("etcd not healthy within 20 s; see {}", etcd.log()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(etcd)
    }

    fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    fn log(&self) -> String {
        self.dir.join("etcd.log").display().to_string()
    }

    /// Whether `GET /health` says `"health":"true"`.
    fn healthy(&self) -> bool {
        let bound = Duration::from_millis(500);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, bound) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(bound));
        let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut response = Vec::new();
        let _ = stream.take(64 * 1024).read_to_end(&mut response);
        String::from_utf8_lossy(&response).contains("\"health\":\"true\"")
    }

    /// `SIGTERM`, then `SIGKILL` after 5 s; removes the temporary directory.
    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &process.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(process.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            let _ = process.kill();
            let _ = process.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
