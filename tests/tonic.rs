//! A tonic generated client (`HealthClient`) over a persistent HTTP/2 connection, against a
//! real tonic-health server on loopback: calls and streams work over the wrapped service
//! directly, the client follows the server to a new port, a call made during an outage waits
//! for the server instead of failing, and the requests carry the logical name as authority.

#[path = "support/grpc.rs"]
mod grpc;

use std::{
    net::{SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use grpc::{SERVICE, request};
use persistent_connection::{
    Event, Handle, PersistentConnection, PersistentConnectionLayer,
    http::{Http2Connection, Http2Connector},
};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinSet,
    time::timeout,
};
use tonic::{body::Body, transport::server::TcpIncoming};
use tonic_health::{
    ServingStatus,
    pb::{health_check_response::ServingStatus as Status, health_client::HealthClient},
};
use tower::util::MapRequestLayer;

/// The bound on every wait: a test that reaches it fails.
const GUARD: Duration = Duration::from_secs(5);
/// The retry delay of every persistent connection here.
const RETRY_DELAY: Duration = Duration::from_millis(100);

type Conn = Http2Connection<Body>;
type Client = HealthClient<PersistentConnection<Conn>>;

// === The server side ===

/// A tonic-health server on its own thread and runtime, reporting [`SERVICE`] as serving and
/// recording the authority of every request it receives.
struct Server {
    address: SocketAddr,
    authorities: Arc<Mutex<Vec<String>>>,
    kill: Option<oneshot::Sender<()>>,
    dead: Option<oneshot::Receiver<()>>,
}

/// A listener on a fresh loopback port. Binding it before the old server dies guarantees
/// that the new server gets another port.
fn bind() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.set_nonblocking(true).expect("set non-blocking");
    listener
}

impl Server {
    /// Serves on `listener`.
    fn start(listener: TcpListener) -> Self {
        let address = listener.local_addr().expect("local address");
        let authorities = Arc::new(Mutex::new(Vec::new()));
        let (kill, killed) = oneshot::channel::<()>();
        let (died, dead) = oneshot::channel();
        let record = authorities.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let (_reporter, health) = grpc::health(ServingStatus::Serving).await;
                let record = MapRequestLayer::new(move |request: hyper::Request<Body>| {
                    let authority = request.uri().authority().map(ToString::to_string);
                    record
                        .lock()
                        .unwrap()
                        .push(authority.unwrap_or_else(|| "<none>".to_owned()));
                    request
                });
                let serve = tonic::transport::Server::builder()
                    .layer(record)
                    .add_service(health)
                    .serve_with_incoming(TcpIncoming::from(listener));
                tokio::select! {
                    result = serve => result.expect("the health server failed"),
                    _ = killed => {}
                }
            });
            // Dropping the runtime drops every connection task: their sockets close, as if
            // the process had died.
            drop(runtime);
            let _ = died.send(());
        });
        Self {
            address,
            authorities,
            kill: Some(kill),
            dead: Some(dead),
        }
    }

    /// Stops the server and closes every connection it had; returns once they are closed.
    async fn kill(mut self) {
        let _ = self.kill.take().expect("killed once").send(());
        let dead = self.dead.take().expect("killed once");
        timeout(GUARD, dead)
            .await
            .expect("the server did not stop")
            .expect("the server thread panicked");
    }

    /// The authorities of the requests received so far.
    fn authorities(&self) -> Vec<String> {
        self.authorities.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

// === The client side ===

/// The events of a persistent connection, without the connection itself (holding a copy
/// would keep it open).
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Attempting,
    Address(SocketAddr),
    Failed(String),
    Connected,
    Disconnected,
}

/// Receives the events, in order.
struct Events(mpsc::UnboundedReceiver<Seen>);

impl Events {
    /// Waits for the first event that matches `wanted`; returns every event received until
    /// then, that one included.
    async fn until(&mut self, wanted: impl Fn(&Seen) -> bool) -> Vec<Seen> {
        let mut seen = Vec::new();
        for _ in 0..1000 {
            let event = timeout(GUARD, self.0.recv())
                .await
                .unwrap_or_else(|_| panic!("no matching event; seen: {seen:?}"))
                .expect("the driver is gone");
            let done = wanted(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
        panic!("no matching event in 1000; seen: {seen:?}");
    }
}

/// Where the server is: the discovery closure reads it before every attempt, and tells
/// `lookups` each time it does.
#[derive(Clone)]
struct Catalog {
    address: Arc<Mutex<SocketAddr>>,
    lookups: mpsc::UnboundedSender<()>,
}

impl Catalog {
    fn new(address: SocketAddr) -> (Self, mpsc::UnboundedReceiver<()>) {
        let (lookups, looked_up) = mpsc::unbounded_channel();
        let address = Arc::new(Mutex::new(address));
        (Self { address, lookups }, looked_up)
    }

    fn publish(&self, address: SocketAddr) {
        *self.address.lock().unwrap() = address;
    }
}

/// A persistent connection whose address comes from `catalog`, named [`SERVICE`], with its
/// events recorded.
fn persistent(
    catalog: &Catalog,
    connector: Http2Connector<Body>,
) -> (PersistentConnection<Conn>, Events) {
    let (tx, rx) = mpsc::unbounded_channel();
    let catalog = catalog.clone();
    let svc = PersistentConnectionLayer::new(move || {
        let _ = catalog.lookups.send(());
        let address = *catalog.address.lock().unwrap();
        async move { Ok::<_, std::convert::Infallible>(address) }
    })
    .server_name(SERVICE)
    .retry_delay(|| RETRY_DELAY)
    .connect_timeout(Duration::from_secs(2))
    .on_event(move |event: &Event<SocketAddr, Conn>| {
        let seen = match event {
            Event::AttemptingToConnect => Seen::Attempting,
            Event::ObtainedAddress(address) => Seen::Address(*address),
            Event::FailedToConnect(error) => Seen::Failed(error.to_string()),
            Event::Connected(_) => Seen::Connected,
            Event::Disconnected => Seen::Disconnected,
            _ => return,
        };
        let _ = tx.send(seen);
    })
    .http2(connector);
    (svc, Events(rx))
}
/// One `check`, bounded by [`GUARD`]; returns the reported status.
async fn check(client: &mut Client) -> Status {
    let response = timeout(GUARD, client.check(request()))
        .await
        .expect("check did not finish")
        .expect("check failed");
    response.into_inner().status()
}

async fn close(handle: Handle<Conn>) {
    timeout(GUARD, handle.close())
        .await
        .expect("close did not finish");
}

// === Tests ===

/// `HealthClient::new` takes the wrapped service as it is, and a unary `check` over it
/// returns the server's status.
#[tokio::test]
async fn a_generated_client_checks_health_over_the_wrapped_service() {
    let server = Server::start(bind());
    let svc = PersistentConnectionLayer::fixed_address(server.address)
        .server_name(SERVICE)
        .http2(Http2Connector::<Body>::new());
    let handle = svc.handle();
    let mut client = HealthClient::new(svc);

    assert_eq!(check(&mut client).await, Status::Serving);
    assert_eq!(
        server.authorities().len(),
        1,
        "one request reached the server"
    );
    close(handle).await;
}

/// A server-streaming call (`watch`) over the wrapped service streams the current status.
#[tokio::test]
async fn a_generated_client_streams_watch_over_the_wrapped_service() {
    let server = Server::start(bind());
    let svc = PersistentConnectionLayer::fixed_address(server.address)
        .server_name(SERVICE)
        .http2(Http2Connector::<Body>::new());
    let handle = svc.handle();
    let mut client = HealthClient::new(svc);

    let mut stream = timeout(GUARD, client.watch(request()))
        .await
        .expect("watch did not start")
        .expect("watch failed")
        .into_inner();
    let first = timeout(GUARD, stream.message())
        .await
        .expect("no status was streamed")
        .expect("the stream failed")
        .expect("the stream ended without a status");
    assert_eq!(first.status(), Status::Serving);
    drop(stream);
    close(handle).await;
}

/// The generated client is `Clone`, its calls can be spawned on a multi-thread runtime
/// (`tokio::spawn` needs the call future to be `Send`), and concurrent calls from many tasks
/// all succeed over the one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_the_client_call_from_spawned_tasks() {
    const TASKS: usize = 16;
    let server = Server::start(bind());
    let svc = PersistentConnectionLayer::fixed_address(server.address)
        .server_name(SERVICE)
        .http2(Http2Connector::<Body>::new());
    let handle = svc.handle();
    let client = HealthClient::new(svc);

    let mut tasks = JoinSet::new();
    for _ in 0..TASKS {
        let mut client = client.clone();
        tasks.spawn(async move { client.check(request()).await });
    }
    let mut serving = 0;
    while let Some(joined) = timeout(GUARD, tasks.join_next())
        .await
        .expect("a spawned call did not finish")
    {
        let response = joined.expect("a task panicked").expect("a call failed");
        assert_eq!(response.into_inner().status(), Status::Serving);
        serving += 1;
    }
    assert_eq!(serving, TASKS);
    assert_eq!(server.authorities().len(), TASKS);
    drop(client);
    close(handle).await;
}

/// When the server dies and comes back on another port, the discovery closure's new address
/// is used: `ObtainedAddress(new)` is reported, the client reconnects, and its calls reach
/// the new server.
#[tokio::test]
async fn the_client_follows_the_server_to_a_new_port() {
    let old = Server::start(bind());
    let (catalog, _lookups) = Catalog::new(old.address);
    let (svc, mut events) = persistent(&catalog, Http2Connector::new());
    let handle = svc.handle();
    let mut client = HealthClient::new(svc);
    assert_eq!(check(&mut client).await, Status::Serving);

    let listener = bind();
    let old_address = old.address;
    old.kill().await;
    events.until(|e| *e == Seen::Disconnected).await;
    let new = Server::start(listener);
    assert_ne!(new.address, old_address);
    catalog.publish(new.address);

    let seen = events.until(|e| *e == Seen::Connected).await;
    assert!(
        seen.contains(&Seen::Address(new.address)),
        "the new address was reported: {seen:?}"
    );
    assert_eq!(check(&mut client).await, Status::Serving);
    assert_eq!(
        new.authorities().len(),
        1,
        "the call reached the new server"
    );
    close(handle).await;
}

/// A call made while the server is down waits (the service is `Pending`, not failed) through
/// several failed connection attempts, and succeeds once the server is back; the connect
/// errors go to the events, never to the call (tonic's own `Channel` would fail it at once).
#[tokio::test]
async fn a_call_made_during_an_outage_waits_for_the_server() {
    let old = Server::start(bind());
    let (catalog, mut lookups) = Catalog::new(old.address);
    let (svc, mut events) = persistent(&catalog, Http2Connector::new());
    let handle = svc.handle();
    let mut client = HealthClient::new(svc);
    assert_eq!(check(&mut client).await, Status::Serving);

    let listener = bind();
    old.kill().await;
    events.until(|e| *e == Seen::Disconnected).await;

    let call = tokio::spawn({
        let mut client = client.clone();
        async move { client.check(request()).await }
    });
    while lookups.try_recv().is_ok() {}
    // Three lookups after the call started: at least two attempts failed meanwhile.
    for _ in 0..3 {
        timeout(GUARD, lookups.recv())
            .await
            .expect("no new attempt")
            .expect("the driver is gone");
    }
    let seen = events.until(|e| matches!(e, Seen::Failed(_))).await;
    assert!(
        !call.is_finished(),
        "the call ended during the outage; events: {seen:?}"
    );

    let new = Server::start(listener);
    catalog.publish(new.address);
    let response = timeout(GUARD, call)
        .await
        .expect("the waiting call did not finish after the restart")
        .expect("the call task panicked")
        .expect("the waiting call failed");
    assert_eq!(response.into_inner().status(), Status::Serving);
    assert_eq!(
        new.authorities().len(),
        1,
        "the call reached the new server"
    );
    close(handle).await;
}

/// tonic sends path-only URIs; the requests reach the server with the layer's server name as
/// their authority, not the replica's `127.0.0.1:port`.
#[tokio::test]
async fn requests_carry_the_server_name_as_authority() {
    let server = Server::start(bind());
    let (catalog, _lookups) = Catalog::new(server.address);
    let (svc, _events) = persistent(&catalog, Http2Connector::new());
    let handle = svc.handle();
    let mut client = HealthClient::new(svc);

    assert_eq!(check(&mut client).await, Status::Serving);
    assert_eq!(server.authorities(), [SERVICE]);
    close(handle).await;
}

/// An origin set on the connector overrides the server name as the requests' authority.
#[tokio::test]
async fn an_origin_on_the_connector_overrides_the_authority() {
    let server = Server::start(bind());
    let (catalog, _lookups) = Catalog::new(server.address);
    let connector = Http2Connector::new().origin("http://health.internal");
    let (svc, _events) = persistent(&catalog, connector);
    let handle = svc.handle();
    let mut client = HealthClient::new(svc);

    assert_eq!(check(&mut client).await, Status::Serving);
    assert_eq!(server.authorities(), ["health.internal"]);
    close(handle).await;
}

/// The drop-in for tonic's `balance_channel`: a generated client over the balanced client of
/// three replicas listed in a catalog. Calls are spread over the replicas, each carries the
/// logical name as authority, and once a replica dies every later call still succeeds (on the
/// others), without the client doing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_runs_over_the_balanced_client_of_a_catalogs_replicas() {
    use futures_util::StreamExt;
    use persistent_connection::{discovery::LocalCatalog, replicas::Replicas};

    let servers: Vec<Server> = (0..3).map(|_| Server::start(bind())).collect();
    let catalog = LocalCatalog::new();
    for (n, server) in servers.iter().enumerate() {
        catalog.insert(format!("replica-{n}"), server.address);
    }
    let layer = PersistentConnectionLayer::new(catalog.clone())
        .server_name(SERVICE)
        .retry_delay(|| RETRY_DELAY);
    let replicas = Replicas::http2(catalog.watch(), layer, Http2Connector::<Body>::new());
    let set = replicas.set();
    let mut client = HealthClient::new(replicas.balanced(64));

    for _ in 0..60 {
        let response = timeout(GUARD, client.check(request()))
            .await
            .expect("check did not finish")
            .expect("check failed");
        assert_eq!(response.into_inner().status(), Status::Serving);
    }
    let counts: Vec<usize> = servers.iter().map(|s| s.authorities().len()).collect();
    println!("calls per replica: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 60);
    assert!(
        counts.iter().all(|&n| n > 0),
        "every replica took calls: {counts:?}"
    );
    for server in &servers {
        assert!(server.authorities().iter().all(|a| a == SERVICE));
    }

    // Replica 0 dies between two calls: once the client has read the close, every later call
    // succeeds. (A call sent in the instant before may have been written to the dying
    // connection; it fails with the connection's error, since nothing proves the server did
    // not take it.)
    let mut servers = servers.into_iter();
    servers.next().unwrap().kill().await;
    let dying = set.handle(&"replica-0".to_owned()).expect("still listed");
    let mut states = dying.state_changes();
    timeout(GUARD, async {
        while dying.state() == persistent_connection::State::Connected {
            states.next().await;
        }
    })
    .await
    .expect("the client read the close");
    let others: Vec<Server> = servers.collect();
    let before: usize = others.iter().map(|s| s.authorities().len()).sum();
    for n in 0..30 {
        let response = timeout(GUARD, client.check(request()))
            .await
            .expect("check did not finish")
            .unwrap_or_else(|status| panic!("call {n} after the death failed: {status}"));
        assert_eq!(response.into_inner().status(), Status::Serving);
    }
    let after: usize = others.iter().map(|s| s.authorities().len()).sum();
    assert_eq!(after - before, 30, "the others took every call");
    assert_ne!(dying.state(), persistent_connection::State::Connected);
}
