//! HTTP/2 keep-alive against a real gRPC server that enforces grpc-core's ping policy (gRFC
//! A8): Python grpcio serving `grpc.health.v1` (tests/support/grpc_ping_server.py).
//!
//! grpc-core allows no pings on a connection without calls (unless the server sets
//! `grpc.keepalive_permit_without_calls`), and one every 5 minutes with calls
//! (`grpc.http2.min_ping_interval_without_data_ms`); each earlier ping is a strike, and past
//! `grpc.http2.max_ping_strikes` (2) it sends `GOAWAY` `ENHANCE_YOUR_CALM` `too_many_pings`.
//!
//! - A connector pinging an idle connection every second gets that `GOAWAY` within seconds;
//!   it doubles its interval, and the layer replaces the connection without a failure.
//! - The defaults (5 minutes, no pings while idle) keep an idle connection up, on a server
//!   that complains at the first early ping; so does the default `keep_alive_while_idle`
//!   alone with a short interval, while the same connector pinging while idle is sent away.
//! - With a call in flight, pings at the server's minimum interval are accepted, and more
//!   frequent ones are not: the default interval is the server's default minimum.
//!
//! The tests need `python3` with `grpcio` and `grpcio-health-checking`. Without them they
//! print a line and pass, unless `REQUIRE_REAL_SERVERS=1` (as in CI), where they fail.

#[path = "support/logs.rs"]
mod logs;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use logs::LogRecorder;
use persistent_connection::{
    Event, Handle, PersistentConnection, PersistentConnectionLayer,
    http::{Http2Connection, Http2Connector},
};
use tokio::{
    sync::mpsc,
    time::{Instant, sleep, timeout},
};
use tonic::body::Body;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The bound on every wait (a Python server's start, a `GOAWAY`, a reconnect): a test that
/// reaches it fails.
const GUARD: Duration = Duration::from_secs(30);
/// The service the server reports as serving, and the client's server name.
const SERVICE: &str = "billing";
/// What the tests need, and how to install it.
const PACKAGES: &str = "python3 with grpcio and grpcio-health-checking \
                        (pip install grpcio grpcio-health-checking)";

type Conn = Http2Connection<Body>;
type Client = HealthClient<PersistentConnection<Conn>>;

// === The server: Python grpcio ===

/// A running `grpc_ping_server.py`, killed (and its directory removed) when dropped, also
/// when the test panics.
struct GrpcServer {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: PathBuf,
    address: SocketAddr,
}

impl GrpcServer {
    /// Starts the server with these options (see the script's `--help`) and waits for its
    /// port. `None` when python3 or its grpc modules are missing and not required.
    fn start(options: &[&str]) -> Option<Self> {
        let available = Command::new("python3")
            .args(["-c", "import grpc, grpc_health.v1.health"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !available {
            if std::env::var("REQUIRE_REAL_SERVERS").as_deref() == Ok("1") {
                panic!("REQUIRE_REAL_SERVERS=1 but {PACKAGES} is missing");
            }
            println!("skipped: needs {PACKAGES}");
            return None;
        }

        static SERVERS: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "persistent-connection-keepalive-{}-{}",
            std::process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed),
        ));
        std::fs::create_dir_all(&dir).expect("create the server's directory");
        let log = std::fs::File::create(dir.join("stderr")).expect("create the server's log");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/grpc_ping_server.py"
        );
        let mut child = Command::new("python3")
            .arg(script)
            .args(options)
            .current_dir(&dir)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("the server's stdout");
        let mut server = Self {
            child,
            stdin,
            dir,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
        };

        // Its first line is the port; read it on a thread, so the wait is bounded.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(GUARD).unwrap_or_default();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| {
            panic!(
                "the gRPC server printed no port ({line:?}); its stderr: {}",
                server.stderr()
            )
        });
        server.address.set_port(port);
        Some(server)
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        drop(self.stdin.take()); // it exits when stdin closes; kill it anyway
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === The client: tonic-health over a persistent connection ===

/// A connection event, with the time it was seen.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Seen {
    Connected,
    Disconnected,
    Failed,
}

struct Events(mpsc::UnboundedReceiver<(Instant, Seen)>);

impl Events {
    /// Waits (bounded by [`GUARD`]) for the next `wanted` event; returns when it was seen.
    async fn until(&mut self, wanted: Seen) -> Instant {
        for _ in 0..1000 {
            let (at, seen) = timeout(GUARD, self.0.recv())
                .await
                .unwrap_or_else(|_| panic!("no {wanted:?} within {GUARD:?}"))
                .expect("the driver is gone");
            if seen == wanted {
                return at;
            }
        }
        panic!("no {wanted:?} in 1000 events");
    }

    /// The events seen so far, without waiting.
    fn seen(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        while let Ok((_, event)) = self.0.try_recv() {
            seen.push(event);
        }
        seen
    }
}

/// A health client over a persistent connection to `address` made by `connector`.
fn client(address: SocketAddr, connector: Http2Connector<Body>) -> (Client, Handle<Conn>, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = PersistentConnectionLayer::fixed_address(address)
        .server_name(SERVICE)
        .on_event(move |event: &Event<SocketAddr, Conn>| {
            let seen = match event {
                Event::Connected(_) => Seen::Connected,
                Event::Disconnected => Seen::Disconnected,
                Event::FailedToConnect(_) => Seen::Failed,
                _ => return,
            };
            let _ = tx.send((Instant::now(), seen));
        })
        .http2(connector);
    let handle = svc.handle();
    (HealthClient::new(svc), handle, Events(rx))
}

/// One health check, bounded by [`GUARD`]: the server answers on the current connection.
async fn check(client: &mut Client) {
    let request = HealthCheckRequest {
        service: SERVICE.into(),
    };
    let response = timeout(GUARD, client.check(request))
        .await
        .expect("the check did not finish")
        .expect("the check failed");
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
}

async fn close(handle: Handle<Conn>) {
    timeout(GUARD, handle.close())
        .await
        .expect("close did not finish");
}

// === The tests ===

/// A connector that pings an idle connection every second gets `GOAWAY` `too_many_pings`
/// from a gRPC server with default settings (the 2nd ping is a strike, the 4th one too
/// many: about 4 s). The connector doubles its interval (warning about it) before the close
/// signal fires, and the layer replaces the connection at once, without a failed attempt,
/// although it never served a request; the new connection serves.
#[tokio::test]
async fn too_many_pings_doubles_the_interval_and_the_layer_reconnects_without_a_failure() {
    let logs = LogRecorder::global();
    let Some(server) = GrpcServer::start(&[]) else {
        return;
    };
    let connector = Http2Connector::<Body>::new()
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .keep_alive_while_idle(true);
    let probe = connector.clone(); // shares the interval
    let (mut client, handle, mut events) = client(server.address, connector);

    // No request on the first connection: a goodbye before serving is graceful too when it
    // is about our pings.
    let connected = events.until(Seen::Connected).await;
    let goaway = events.until(Seen::Disconnected).await;
    let goaway_after = goaway - connected;
    println!("GOAWAY too_many_pings {goaway_after:?} after connecting (pings every 1 s)");
    assert!(
        goaway_after >= Duration::from_secs(2),
        "the server allows a ping and a strike first"
    );
    assert_eq!(
        probe.current_keep_alive_interval(),
        Some(Duration::from_secs(2)),
        "doubled before the close signal fired"
    );
    assert!(
        logs.records()
            .iter()
            .any(|record| record.level == tracing::Level::WARN
                && record.message.contains(
                    "server complained of too many pings; doubling the keep-alive interval to 2s"
                )),
        "the doubling is logged at WARN: {:?}",
        logs.records()
    );

    let reconnected = events.until(Seen::Connected).await;
    println!(
        "reconnected {:?} after the GOAWAY",
        reconnected.saturating_duration_since(goaway)
    );
    check(&mut client).await;
    let stats = handle.stats();
    assert_eq!(stats.failed_attempts, 0, "{stats:?}");
    assert_eq!(stats.consecutive_failures, 0, "{stats:?}");
    assert!(stats.connections >= 2, "{stats:?}");
    assert!(!events.seen().contains(&Seen::Failed));
    close(handle).await;
    drop(server);
}

/// On a server that sends `GOAWAY` at the second early ping (`max_ping_strikes` 1, the
/// lowest limit: 0 means none), idle connections made with the defaults, and with the default
/// `keep_alive_while_idle` (off) but a 500 ms interval, stay up for [`IDLE`] and serve after
/// it; the same connector pinging while idle (the control) is sent away after its third ping,
/// about 1.5 s, so [`IDLE`] is ample time for the server to complain about idle pings.
#[tokio::test]
async fn an_idle_connection_with_the_defaults_is_never_sent_away() {
    const IDLE: Duration = Duration::from_secs(4);
    let Some(server) = GrpcServer::start(&["--max-ping-strikes", "1"]) else {
        return;
    };
    let defaults = Http2Connector::<Body>::new();
    assert_eq!(
        defaults.current_keep_alive_interval(),
        Some(Duration::from_secs(300)),
        "the default interval is grpc-core's min_ping_interval_without_data"
    );
    let short = Http2Connector::<Body>::new().keep_alive_interval(Some(Duration::from_millis(500)));
    let control = short.clone().keep_alive_while_idle(true);

    let mut idle = Vec::new();
    for connector in [defaults, short] {
        let (mut client, handle, mut events) = client(server.address, connector);
        events.until(Seen::Connected).await;
        check(&mut client).await;
        idle.push((client, handle, events));
    }
    let (_control_client, control_handle, mut control_events) = client(server.address, control);
    let control_connected = control_events.until(Seen::Connected).await;

    sleep(IDLE).await; // the idle period under test, not a wait for something

    let sent_away = control_events.until(Seen::Disconnected).await;
    println!(
        "control (idle pings every 500 ms): GOAWAY {:?} after connecting",
        sent_away - control_connected
    );
    for (name, (mut client, handle, mut events)) in
        ["defaults", "500 ms, not while idle"].into_iter().zip(idle)
    {
        check(&mut client).await;
        assert_eq!(events.seen(), [], "{name}: no event while idle");
        let stats = handle.stats();
        assert_eq!(stats.connections, 1, "{name}: {stats:?}");
        assert_eq!(stats.disconnections, 0, "{name}: {stats:?}");
        close(handle).await;
    }
    close(control_handle).await;
    drop(server);
}

/// With a call in flight (a `Watch` stream, on which the server sends nothing after the
/// first status), pings every second are accepted by a server whose minimum is one second
/// (`min_ping_interval_without_data` scaled down from its 5-minute default, as our default
/// interval is 5 minutes) that sends `GOAWAY` at the second early ping; pings every 300 ms
/// (the control) get that `GOAWAY`. So pings are sent during calls, and an interval equal to the server's minimum is
/// within its policy.
#[tokio::test]
async fn pings_during_a_call_at_the_servers_minimum_interval_are_accepted() {
    const CALL: Duration = Duration::from_millis(4500);
    let Some(server) =
        GrpcServer::start(&["--max-ping-strikes", "1", "--min-ping-interval-ms", "1000"])
    else {
        return;
    };
    let at_minimum =
        Http2Connector::<Body>::new().keep_alive_interval(Some(Duration::from_secs(1)));
    let too_often =
        Http2Connector::<Body>::new().keep_alive_interval(Some(Duration::from_millis(300)));

    let mut calls = Vec::new();
    for connector in [at_minimum, too_often] {
        let probe = connector.clone();
        let (mut client, handle, mut events) = client(server.address, connector);
        let connected = events.until(Seen::Connected).await;
        let request = HealthCheckRequest {
            service: SERVICE.into(),
        };
        let mut watch = timeout(GUARD, client.watch(request))
            .await
            .expect("watch did not start")
            .expect("watch failed")
            .into_inner();
        let first = timeout(GUARD, watch.message())
            .await
            .expect("no first status")
            .expect("the stream failed")
            .expect("the stream ended");
        assert_eq!(first.status(), ServingStatus::Serving);
        calls.push((client, handle, events, watch, probe, connected));
    }

    sleep(CALL).await; // the call's duration under test, not a wait for something

    let [accepted, control] = <[_; 2]>::try_from(calls).ok().expect("two calls");
    let (mut client, handle, mut events, watch, probe, _) = accepted;
    assert_eq!(events.seen(), [], "pings at the minimum: no disconnection");
    assert_eq!(
        probe.current_keep_alive_interval(),
        Some(Duration::from_secs(1))
    );
    drop(watch);
    check(&mut client).await;
    close(handle).await;

    let (_client, handle, mut events, _watch, probe, connected) = control;
    let sent_away = events.until(Seen::Disconnected).await;
    println!(
        "control (pings every 300 ms during a call): GOAWAY {:?} after connecting; interval now {:?}",
        sent_away - connected,
        probe.current_keep_alive_interval()
    );
    assert_eq!(
        probe.current_keep_alive_interval(),
        Some(Duration::from_millis(600))
    );
    close(handle).await;
    drop(server);
}
