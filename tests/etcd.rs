//! etcd as an address source (`discovery::etcd`), against a real etcd on 127.0.0.1 (see
//! `support/etcd.rs`; skipped with one line when etcd is not installed, unless
//! `REQUIRE_REAL_SERVERS=1`) and real HTTP/2 replicas on 127.0.0.1 that register themselves:
//!
//! - a catalog of two registered replicas: the client connects and serves, and two layers on
//!   one catalog take the replicas in turn;
//! - a registration outlives its TTL (kept alive), deregister removes its key at once, drop
//!   too, and neither comes back (the keep-alive task has ended);
//! - a replica that dies (its runtime is gone: no revoke): its key lapses within the TTL, and
//!   the client is on the other replica within the TTL and one retry delay;
//! - a dead replica still listed costs one failed attempt, then the next replica in turn;
//! - etcd down for longer than the TTL, then back: the key is there again, under a new lease;
//! - failures: etcd unreachable, etcd hanging, a prefix without replicas, a value that is not
//!   an address, bad arguments.
//!
//! Real sockets and real time: every wait polls a condition with a bounded deadline, except
//! where elapsed time is the property (a key kept past its TTL, etcd down past the TTL).
//! Figures are printed; bounds are generous.
#![cfg(feature = "etcd")]

#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/h2server.rs"]
mod h2server;
#[path = "support/logs.rs"]
mod logs;
mod support;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use etcd::Etcd;
use etcd_client::{Client, GetOptions, LeaseTimeToLiveOptions};
use h2server::H2Server;
use persistent_connection::{
    ConnectErrorKind, PersistentConnection, PersistentConnectionLayer,
    discovery::etcd::{Catalog, EtcdErrorKind, Registration, register},
    http::{Http2Connection, Http2Connector},
};
use support::{Body, Ev, Events, SOON, connected, disconnected, failed, get_ok, recorder};
use tokio::time::Instant;

type Conn = Http2Connection<Body>;
type Svc = PersistentConnection<Conn>;

const PREFIX: &str = "/services/billing/";
/// The lease TTL of every registration here: etcd's minimum with default settings.
const TTL: Duration = Duration::from_secs(2);
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// The slack added to every bound on time: for a loaded machine, never a measure.
const SLACK: Duration = Duration::from_secs(3);

// === helpers ===

/// A client of `catalog` over HTTP/2, retrying every 200 ms, with its events.
fn client_of(catalog: &Catalog) -> (Svc, Events) {
    let (hook, events) = recorder::<String, Conn>();
    let svc = PersistentConnectionLayer::new(catalog.clone())
        .server_name("billing")
        .retry_delay(|| RETRY_DELAY)
        .jitter(0.0)
        .connect_timeout(Duration::from_secs(2))
        .on_event(hook)
        .http2(Http2Connector::new());
    (svc, events)
}

/// The replica's name in an answer (`"replica-a http://billing/x"`).
fn replica_of(answer: &str) -> String {
    answer.split(' ').next().unwrap_or_default().to_owned()
}

/// A plain etcd client, for looking at the keys.
async fn etcd_client(etcd: &Etcd) -> Client {
    Client::connect([etcd.endpoint()], None)
        .await
        .expect("an etcd client")
}

/// The lease of `key`, if it exists.
async fn lease_of(client: &Client, key: &str) -> Option<i64> {
    let response = client
        .clone()
        .get(key, None)
        .await
        .expect("etcd answers a get");
    response.kvs().first().map(|kv| kv.lease())
}

/// Polls (every 50 ms, at most `bound`, else panics naming `what`) until `done` holds of the
/// lease of `key`; returns when it held.
async fn until_key(
    client: &Client,
    key: &str,
    what: &str,
    bound: Duration,
    mut done: impl FnMut(Option<i64>) -> bool,
) -> Instant {
    let deadline = Instant::now() + bound;
    loop {
        let lease = lease_of(client, key).await;
        if done(lease) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {bound:?}: {key} has lease {lease:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers `server` under [`PREFIX`].
async fn register_server(etcd: &Etcd, server: &H2Server) -> Registration {
    register([etcd.endpoint()], PREFIX, server.addr(), TTL)
        .await
        .expect("register the replica")
}

/// A replica that can die: an HTTP/2 server and its registration, on a runtime of their own
/// on a thread of their own. [`kill`](Self::kill) shuts that runtime down: the server's
/// sockets close and the keep-alive task stops, and the registration is dropped outside any
/// runtime, so nothing revokes the lease. What remains is what a killed process leaves.
struct MortalReplica {
    name: &'static str,
    addr: SocketAddr,
    key: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MortalReplica {
    async fn start(name: &'static str, endpoint: String) -> Self {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the replica's runtime");
            let registration = runtime.block_on(async move {
                let server = H2Server::start(name).await;
                let registration = register([endpoint], PREFIX, server.addr(), TTL)
                    .await
                    .expect("register the replica");
                let _ = ready_tx.send((server.addr(), registration.key().to_owned()));
                let _ = stop_rx.await;
                registration
            });
            // Every task of the replica ends here, the keep-alive's and the server's.
            drop(runtime);
            // Outside any runtime: no revoke.
            drop(registration);
        });
        let (addr, key) = tokio::task::spawn_blocking(move || {
            ready_rx
                .recv_timeout(SOON + SOON)
                .expect("the replica started")
        })
        .await
        .unwrap();
        Self {
            name,
            addr,
            key,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Kills the replica; returns once its runtime is gone.
    async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .unwrap()
                .expect("the replica's thread ended cleanly");
        }
    }
}

impl Drop for MortalReplica {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

// === tests ===

/// Two registered replicas: the client connects through the catalog and serves its requests
/// on one connection to one of them; a second layer on the same catalog takes the other one
/// (the turn goes over the keys in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_of_two_registered_replicas_serves_requests() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (a, b) = (
        H2Server::start("replica-a").await,
        H2Server::start("replica-b").await,
    );
    let _registrations = (
        register_server(&etcd, &a).await,
        register_server(&etcd, &b).await,
    );
    let catalog = Catalog::new([etcd.endpoint()], PREFIX).unwrap();
    let listed = catalog.replicas().await.expect("the replicas");
    let mut addresses: Vec<String> = listed.iter().map(|(_, address)| address.clone()).collect();
    addresses.sort();
    let mut expected = vec![a.addr().to_string(), b.addr().to_string()];
    expected.sort();
    assert_eq!(addresses, expected, "both replicas are listed: {listed:?}");

    let (mut first, _) = client_of(&catalog);
    let mut answers = Vec::new();
    for n in 0..10 {
        answers.push(get_ok(&mut first, &format!("/request/{n}")).await);
    }
    let used = replica_of(&answers[0]);
    assert!(
        answers.iter().all(|answer| replica_of(answer) == used),
        "one connection, one replica: {answers:?}"
    );
    assert_eq!(answers[3], format!("{used} http://billing/request/3"));

    let (mut second, _) = client_of(&catalog);
    let other = replica_of(&get_ok(&mut second, "/other").await);
    let mut used_both = vec![used.clone(), other.clone()];
    used_both.sort();
    assert_eq!(
        used_both,
        ["replica-a", "replica-b"],
        "two layers on one catalog take the replicas in turn"
    );
    let accepted = (a.counts().accepted, b.counts().accepted);
    assert_eq!(accepted, (1, 1), "one connection to each replica");
}

/// A registration keeps its key for three TTLs (its keep-alive works; waiting is the
/// property), under its first lease. `deregister` deletes the key before it returns; dropping
/// a registration deletes its key soon after. Neither key comes back within a TTL: no
/// keep-alive task is left to register again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_outlives_its_ttl_until_deregistered_or_dropped() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let client = etcd_client(&etcd).await;
    let (a, b) = (
        H2Server::start("replica-a").await,
        H2Server::start("replica-b").await,
    );
    let kept = register_server(&etcd, &a).await;
    let dropped = register_server(&etcd, &b).await;
    let (kept_key, dropped_key) = (kept.key().to_owned(), dropped.key().to_owned());
    assert!(kept_key.starts_with(PREFIX), "{kept_key}");
    assert_ne!(kept_key, dropped_key);
    println!("registered: {kept:?}");
    let lease = kept.lease_id();

    let started = Instant::now();
    while started.elapsed() < 3 * TTL {
        assert_eq!(
            lease_of(&client, &kept_key).await,
            Some(lease),
            "the key, under its first lease, {:?} after it was registered",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        lease_of(&client, &dropped_key).await,
        Some(dropped.lease_id())
    );
    assert_eq!(kept.lease_id(), lease, "no registration again was needed");

    support::within(SOON, "deregister", kept.deregister())
        .await
        .expect("deregister");
    assert_eq!(
        lease_of(&client, &kept_key).await,
        None,
        "deregister deletes the key before it returns"
    );

    let dropped_at = Instant::now();
    drop(dropped);
    let gone = until_key(&client, &dropped_key, "the dropped key gone", SOON, |l| {
        l.is_none()
    })
    .await;
    println!(
        "dropped registration's key gone {:?} after the drop",
        gone - dropped_at
    );

    // A keep-alive task left running would find its lease revoked within a third of the TTL
    // and register again.
    let watched = Instant::now();
    while watched.elapsed() < TTL + TTL / 2 {
        for key in [&kept_key, &dropped_key] {
            assert_eq!(lease_of(&client, key).await, None, "{key} came back");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica dies (its runtime is shut down: the server's sockets close, the keep-alive
/// stops, nothing revokes): its key is still there just after, and gone within the TTL
/// (plus slack); the client, connected to it, is on the other replica within the TTL and one
/// retry delay (plus slack). Both figures are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_lapses_within_its_ttl_and_the_client_moves_on() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let client = etcd_client(&etcd).await;
    let mut replicas = [
        MortalReplica::start("replica-a", etcd.endpoint()).await,
        MortalReplica::start("replica-b", etcd.endpoint()).await,
    ];
    let catalog = Catalog::new([etcd.endpoint()], PREFIX).unwrap();
    let (mut svc, mut events) = client_of(&catalog);
    let used = replica_of(&get_ok(&mut svc, "/before").await);
    let victim = replicas.iter().position(|r| r.name == used).unwrap();
    let survivor = 1 - victim;
    println!("client on {used} ({}); killing it", replicas[victim].addr);

    let killed_at = Instant::now();
    replicas[victim].kill().await;
    let victim_key = replicas[victim].key.clone();
    assert!(
        lease_of(&client, &victim_key).await.is_some(),
        "the dead replica's key is still there just after (nothing revoked it)"
    );

    events.wait_for(disconnected, SOON).await;
    let moved = events.wait_for(connected, TTL + RETRY_DELAY + SLACK).await;
    let answer = get_ok(&mut svc, "/after").await;
    assert_eq!(replica_of(&answer), replicas[survivor].name, "{answer}");
    println!(
        "client on {} {:?} after the kill (bound: TTL {TTL:?} + retry delay {RETRY_DELAY:?})",
        replicas[survivor].name,
        moved - killed_at
    );
    println!("client events: {:?}", events.timed());
    assert!(moved - killed_at <= TTL + RETRY_DELAY + SLACK);

    let gone = until_key(
        &client,
        &victim_key,
        "the dead replica's key gone",
        TTL + SLACK,
        |lease| lease.is_none(),
    )
    .await;
    println!(
        "dead replica's key gone {:?} after the kill (TTL {TTL:?})",
        gone - killed_at
    );
    assert!(gone - killed_at <= TTL + SLACK);
    assert!(
        lease_of(&client, &replicas[survivor].key).await.is_some(),
        "the live replica's key stays"
    );
    let listed = catalog.replicas().await.unwrap();
    assert_eq!(
        listed,
        [(
            replicas[survivor].key.clone(),
            replicas[survivor].addr.to_string()
        )]
    );
    replicas[survivor].kill().await;
}

/// etcd stops for longer than the TTL and starts again with the same data directory (which
/// restores the old lease): the registration has noticed the loss and registers again as
/// soon as etcd answers, so its key is there under a new lease, and the old lease is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_lost_while_etcd_was_down_comes_back_with_a_new_lease() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let server = H2Server::start("replica-a").await;
    let registration = register_server(&etcd, &server).await;
    let key = registration.key().to_owned();
    let old = registration.lease_id();
    {
        let client = etcd_client(&etcd).await;
        assert_eq!(lease_of(&client, &key).await, Some(old));
    }

    etcd.stop().await;
    // etcd unreachable for longer than the TTL: the time is the property.
    tokio::time::sleep(TTL + TTL / 2 + Duration::from_millis(500)).await;
    etcd.start_again().await;
    let restarted_at = Instant::now();

    let client = etcd_client(&etcd).await;
    let back = until_key(
        &client,
        &key,
        "the key under a new lease",
        SOON + SLACK,
        |lease| lease.is_some_and(|lease| lease != old && lease == registration.lease_id()),
    )
    .await;
    println!(
        "key back under lease {:x} (was {old:x}) {:?} after etcd answered again",
        registration.lease_id(),
        back - restarted_at
    );
    let deadline = Instant::now() + TTL + SLACK;
    loop {
        let old_lease = client
            .clone()
            .lease_time_to_live(old, Some(LeaseTimeToLiveOptions::new()))
            .await
            .expect("etcd answers lease_time_to_live");
        if old_lease.ttl() == -1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old lease is still there: {old_lease:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    support::within(SOON, "deregister", registration.deregister())
        .await
        .expect("deregister");
    assert_eq!(lease_of(&client, &key).await, None);
}

/// A replica that is listed but dead (its key sorts first; nothing listens on its port) costs
/// one failed attempt: the next lookup gives the replica after it in turn, and the client
/// connects there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_still_listed_costs_one_failed_attempt() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut client = etcd_client(&etcd).await;
    let dead = format!("127.0.0.1:{}", etcd::free_port());
    let live = H2Server::start("replica-live").await;
    let listed = [
        (format!("{PREFIX}a-dead"), dead.clone()),
        (format!("{PREFIX}b-live"), live.addr().to_string()),
    ];
    for (key, address) in &listed {
        client
            .put(key.as_str(), address.as_str(), None)
            .await
            .unwrap();
    }
    let catalog = Catalog::new([etcd.endpoint()], PREFIX).unwrap();
    assert_eq!(catalog.replicas().await.unwrap(), listed);

    let (mut svc, mut events) = client_of(&catalog);
    events.wait_for(connected, SOON).await;
    assert_eq!(
        get_ok(&mut svc, "/x").await,
        "replica-live http://billing/x"
    );
    let seen = events.seen();
    assert_eq!(
        seen.iter()
            .map(|event| match event {
                Ev::Failed(_, kind) => format!("Failed({kind:?})"),
                other => other.to_string(),
            })
            .collect::<Vec<_>>(),
        [
            "Attempting".to_owned(),
            format!("Address({dead})"),
            "Failed(Connect)".to_owned(),
            format!("Address({})", live.addr()),
            "Connected(0)".to_owned(),
        ],
        "{seen:?}"
    );
}

/// Nothing listens on etcd's port: each attempt fails in discovery, with a message naming
/// the endpoint and the prefix; the layer tries again after its retry delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_a_failed_discovery_naming_endpoints_and_prefix() {
    let endpoint = format!("127.0.0.1:{}", etcd::free_port());
    let catalog = Catalog::new([endpoint.as_str()], PREFIX).expect("no I/O in Catalog::new");
    let (svc, mut events) = client_of(&catalog);
    events.wait_for(failed, SOON).await;
    // The same error again is not reported again: the driver's count says it retried.
    let handle = svc.handle();
    let deadline = Instant::now() + SOON;
    while handle.stats().failed_attempts < 2 {
        assert!(
            Instant::now() < deadline,
            "no second attempt: {:?}",
            handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failures: Vec<(String, ConnectErrorKind)> = events
        .seen()
        .into_iter()
        .filter_map(|event| match event {
            Ev::Failed(text, kind) => Some((text, kind)),
            _ => None,
        })
        .collect();
    let (text, kind) = &failures[0];
    println!("{text}");
    assert_eq!(*kind, ConnectErrorKind::Discovery);
    assert!(text.contains(&format!("etcd at {endpoint}")), "{text}");
    assert!(
        text.contains(&format!("reading prefix \"{PREFIX}\"")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
}

/// A "server" that accepts TCP connections and never answers: the layer's connect timeout
/// ends each attempt (the catalog's own request timeout is longer); with a short request
/// timeout, the catalog's own error says which request hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_etcd_is_bounded_by_the_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let held = Arc::new(Mutex::new(Vec::new()));
    let accepting = tokio::spawn({
        let held = held.clone();
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                held.lock().unwrap().push(stream);
            }
        }
    });

    let catalog = Catalog::new([endpoint.as_str()], PREFIX)
        .unwrap()
        .request_timeout(Duration::from_secs(60));
    let connect_timeout = Duration::from_secs(1);
    let (hook, mut events) = recorder::<String, Conn>();
    let started = Instant::now();
    let _svc = PersistentConnectionLayer::new(catalog)
        .server_name("billing")
        .retry_delay(|| RETRY_DELAY)
        .connect_timeout(connect_timeout)
        .on_event(hook)
        .http2(Http2Connector::<Body>::new());
    let failed_at = events.wait_for(failed, connect_timeout + SOON).await;
    println!("attempt failed {:?} after the start", failed_at - started);
    assert!(
        events
            .seen()
            .iter()
            .any(|e| matches!(e, Ev::Failed(_, ConnectErrorKind::Timeout))),
        "a timeout: {:?}",
        events.seen()
    );
    assert!(!held.lock().unwrap().is_empty(), "etcd's port was dialed");

    let short = Catalog::new([endpoint.as_str()], PREFIX)
        .unwrap()
        .request_timeout(Duration::from_millis(500));
    let error = support::within(SOON, "replicas()", short.replicas())
        .await
        .expect_err("no answer");
    println!("{error}");
    assert_eq!(error.kind(), EtcdErrorKind::Timeout);
    let text = error.to_string();
    assert!(text.contains(&format!("etcd at {endpoint}")), "{text}");
    assert!(
        text.contains(&format!("reading prefix \"{PREFIX}\" timed out")),
        "{text}"
    );
    accepting.abort();
}

/// Nothing is registered under the prefix: each attempt fails in discovery with a message
/// naming the prefix; the list of replicas is empty (no error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_without_replicas_is_an_error_naming_it() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let catalog = Catalog::new([etcd.endpoint()], "/services/nobody/").unwrap();
    assert_eq!(catalog.replicas().await.unwrap(), []);
    let (_svc, mut events) = client_of(&catalog);
    events.wait_for(failed, SOON).await;
    let text = events
        .seen()
        .into_iter()
        .find_map(|event| match event {
            Ev::Failed(text, ConnectErrorKind::Discovery) => Some(text),
            _ => None,
        })
        .expect("a failed discovery");
    println!("{text}");
    assert!(
        text.contains("no replica under prefix \"/services/nobody/\""),
        "{text}"
    );
    assert!(text.contains(&etcd.endpoint()), "{text}");
}

/// Values that are not `host:port` sit under the prefix beside a registered replica: they are
/// skipped, each with a warning naming its key and value, and the replica is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_is_not_an_address_is_skipped_and_the_others_used() {
    let logs = logs::LogRecorder::global();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut client = etcd_client(&etcd).await;
    let bad = [
        (format!("{PREFIX}0-not-an-address"), "not an address"),
        (format!("{PREFIX}1-no-port"), "10.0.0.1"),
        (format!("{PREFIX}zz-port-not-a-number"), "10.0.0.1:http"),
    ];
    for (key, value) in &bad {
        client.put(key.as_str(), *value, None).await.unwrap();
    }
    let server = H2Server::start("replica-a").await;
    let registration = register_server(&etcd, &server).await;
    let catalog = Catalog::new([etcd.endpoint()], PREFIX).unwrap();
    let all = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(all.kvs().len(), 4, "three bad values and the replica");

    assert_eq!(
        catalog.replicas().await.unwrap(),
        [(registration.key().to_owned(), server.addr().to_string())]
    );
    // Each lookup lands on the replica, whatever the turn.
    for _ in 0..3 {
        let (mut svc, _) = client_of(&catalog);
        let answer = get_ok(&mut svc, "/x").await;
        assert_eq!(answer, "replica-a http://billing/x");
    }
    for (key, value) in &bad {
        let warned = logs.records().into_iter().any(|record| {
            record.level == tracing::Level::WARN
                && record.field("key") == Some(key.as_str())
                && record.field("value") == Some(*value)
        });
        assert!(warned, "no warning naming {key} = {value:?}");
    }
}

/// Arguments that cannot work are clear errors, before any I/O, without a panic: no
/// endpoint, an endpoint that is not `host:port`, `https`, an empty prefix; for `register`
/// also an address that is not `host:port` and a TTL under 1 s or over an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_clear_errors() {
    let refused = |result: Result<Catalog, _>, needle: &str| {
        let error: persistent_connection::discovery::etcd::EtcdError = result.expect_err("refused");
        println!("{error}");
        assert_eq!(error.kind(), EtcdErrorKind::InvalidInput);
        assert!(
            error.to_string().contains(needle),
            "{error} lacks {needle:?}"
        );
    };
    refused(Catalog::new(Vec::<String>::new(), PREFIX), "no endpoint");
    refused(
        Catalog::new(["127.0.0.1"], PREFIX),
        "\"127.0.0.1\": no :port",
    );
    refused(
        Catalog::new(["127.0.0.1:2379", "a b:2379"], PREFIX),
        "\"a b:2379\"",
    );
    refused(Catalog::new(["127.0.0.1:99999"], PREFIX), "1 to 65535");
    refused(Catalog::new(["https://127.0.0.1:2379"], PREFIX), "https");
    refused(Catalog::new(["127.0.0.1:2379"], ""), "prefix is empty");

    let endpoint = format!("127.0.0.1:{}", etcd::free_port());
    let cases = [
        (
            PREFIX,
            "not an address",
            TTL,
            "address \"not an address\" is not host:port",
        ),
        (
            PREFIX,
            "127.0.0.1:8080",
            Duration::from_millis(500),
            "500ms is out of bounds",
        ),
        (
            PREFIX,
            "127.0.0.1:8080",
            Duration::from_secs(7200),
            "7200s is out of bounds",
        ),
        ("", "127.0.0.1:8080", TTL, "prefix is empty"),
    ];
    for (prefix, address, ttl, needle) in cases {
        let error = register([endpoint.as_str()], prefix, address, ttl)
            .await
            .expect_err("refused");
        println!("{error}");
        assert_eq!(error.kind(), EtcdErrorKind::InvalidInput, "{error}");
        assert!(
            error.to_string().contains(needle),
            "{error} lacks {needle:?}"
        );
    }
    let error = register(["nonsense"], PREFIX, "127.0.0.1:8080", TTL)
        .await
        .expect_err("refused");
    assert_eq!(error.kind(), EtcdErrorKind::InvalidInput, "{error}");
    // Well-formed, but nothing listens: a request error, not a panic.
    let error = register([endpoint.as_str()], PREFIX, "127.0.0.1:8080", TTL)
        .await
        .expect_err("nothing listens");
    println!("{error}");
    assert_eq!(error.kind(), EtcdErrorKind::Request, "{error}");
    assert!(error.to_string().contains("granting a lease"), "{error}");
}
