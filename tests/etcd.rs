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
//! The watch (`Catalog::watch`), its changes asserted in their exact order:
//!
//! - it is lazy (no watcher in etcd before it is polled), starts with the registered
//!   replicas, then follows registrations, deregistrations, value changes and values that are
//!   not addresses; dropping it removes its watcher from etcd;
//! - a replica that dies is removed within its TTL;
//! - etcd stopped and started again: nothing is removed while it is down, and the changes
//!   made before the watch could reconnect (a proxy in front of etcd refuses it until then)
//!   arrive once each, in order; the retry policy sees the failures in a row, counted again
//!   from 0 after the watch was back;
//! - changes compacted away while the watch was disconnected: the watch sends exactly the
//!   difference;
//! - etcd silent (every byte dropped): the keep-alive of the connection notices, and the
//!   watch catches up once etcd is reachable again;
//! - under `replicas::Replicas`: a balanced client reaches each registered replica, and a
//!   deregistered one leaves it.
//!
//! Real sockets and real time: every wait polls a condition with a bounded deadline, except
//! where elapsed time is the property (a key kept past its TTL, etcd down past the TTL, a
//! watch that sends nothing while etcd is down). Figures are printed; bounds are generous.
#![cfg(feature = "etcd")]

#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/h2server.rs"]
mod h2server;
#[path = "support/logs.rs"]
mod logs;
#[path = "support/mortal.rs"]
mod mortal;
mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd::Etcd;
use etcd_client::{Client, CompactionOptions, GetOptions, LeaseTimeToLiveOptions};
use fault_proxy::{FaultProxy, Mode};
use futures_util::StreamExt as _;
use h2server::H2Server;
use mortal::MortalReplica;
use persistent_connection::{
    ConnectErrorKind, PersistentConnection, PersistentConnectionLayer,
    discovery::{
        Changes,
        etcd::{Catalog, EtcdErrorKind, Registration, register},
    },
    http::{Http2Connection, Http2Connector},
    replicas::Replicas,
    retry::{RetryContext, policy_fn},
};
use support::{Body, Ev, Events, SOON, connected, disconnected, failed, get_ok, recorder};
use tokio::time::Instant;
use tower::discover::Change;

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

/// A change as text, its key without the prefix: `+key=address` or `-key`.
fn describe(change: &Change<String, String>) -> String {
    let short = |key: &str| key.strip_prefix(PREFIX).unwrap_or(key).to_owned();
    match change {
        Change::Insert(key, address) => format!("+{}={address}", short(key)),
        Change::Remove(key) => format!("-{}", short(key)),
    }
}

/// The next `n` changes of `watch`, each within `bound` of the one before.
async fn next_changes(
    watch: &mut Changes<String, String>,
    n: usize,
    bound: Duration,
) -> Vec<String> {
    let mut changes = Vec::new();
    for _ in 0..n {
        let what = format!("change {} of {n} (after {changes:?})", changes.len() + 1);
        let change = support::within(bound, &what, watch.next()).await;
        changes.push(describe(&change.expect("a watch never ends")));
    }
    changes
}

/// Asserts that `watch` sends nothing for `period` (the time is the property).
async fn no_change_for(watch: &mut Changes<String, String>, period: Duration, why: &str) {
    if let Ok(change) = tokio::time::timeout(period, watch.next()).await {
        panic!("{why}: the watch sent {:?}", change.as_ref().map(describe));
    }
}

/// `key` (under [`PREFIX`]) set to `value`, by a plain client: no lease.
async fn put(client: &mut Client, key: &str, value: &str) {
    client
        .put(format!("{PREFIX}{key}"), value, None)
        .await
        .expect("etcd answers a put");
}

async fn delete(client: &mut Client, key: &str) {
    client
        .delete(format!("{PREFIX}{key}"), None)
        .await
        .expect("etcd answers a delete");
}

/// Polls (every 50 ms, at most `bound`) until etcd counts `n` watchers.
async fn until_watchers(etcd: &Etcd, n: f64, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let watchers = etcd.metric("etcd_debugging_mvcc_watcher_total");
        if watchers == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "etcd counts {watchers:?} watchers, not {n}, after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A retry policy of 100 ms that records the failures in a row it is asked with.
fn recording_policy() -> (
    impl persistent_connection::retry::RetryPolicy,
    Arc<Mutex<Vec<u32>>>,
) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let policy = policy_fn({
        let asked = asked.clone();
        move |context: &RetryContext<'_>| {
            asked.lock().unwrap().push(context.consecutive_failures());
            Some(Duration::from_millis(100))
        }
    });
    (policy, asked)
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
        MortalReplica::start("replica-a", etcd.endpoint(), PREFIX, TTL).await,
        MortalReplica::start("replica-b", etcd.endpoint(), PREFIX, TTL).await,
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

// === watch ===

/// The watch does nothing before it is polled; it starts with the replicas registered now
/// (a value that is not an address skipped), then sends, in order: a registration (insert), a
/// deregistration (remove), a key's value put (insert), the same value put again (nothing), a
/// changed value (insert), a value that is not an address under a new key (nothing) and in
/// place of a listed address (remove), a deletion of an unlisted key (nothing); a last put
/// shows that nothing else came in between. Each skipped value is logged. Dropping the watch
/// removes its watcher from etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_starts_with_the_registered_replicas_then_follows_each_change() {
    let logs = logs::LogRecorder::global();
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut client = etcd_client(&etcd).await;
    put(&mut client, "0-junk", "junk").await;
    let endpoints = [etcd.endpoint()];
    let a = register(endpoints.clone(), PREFIX, "127.0.0.1:1001", TTL)
        .await
        .unwrap();
    let b = register(endpoints.clone(), PREFIX, "127.0.0.1:1002", TTL)
        .await
        .unwrap();
    let short =
        |registration: &Registration| registration.key().strip_prefix(PREFIX).unwrap().to_owned();
    let (a_key, b_key) = (short(&a), short(&b));

    let catalog = Catalog::new(endpoints.clone(), PREFIX).unwrap();
    let mut watch = catalog.watch();
    // Time for a task, had one been spawned, to open a watch: the time is the property.
    tokio::time::sleep(Duration::from_millis(500)).await;
    until_watchers(&etcd, 0.0, SOON).await;

    assert_eq!(
        next_changes(&mut watch, 2, SOON).await,
        [
            format!("+{a_key}=127.0.0.1:1001"),
            format!("+{b_key}=127.0.0.1:1002")
        ],
        "the registered replicas, in key order"
    );
    let c = register(endpoints.clone(), PREFIX, "127.0.0.1:1003", TTL)
        .await
        .unwrap();
    let c_key = short(&c);
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        [format!("+{c_key}=127.0.0.1:1003")]
    );
    until_watchers(&etcd, 1.0, SOON).await;
    a.deregister().await.unwrap();
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        [format!("-{a_key}")]
    );

    put(&mut client, "manual", "127.0.0.1:2001").await;
    put(&mut client, "manual", "127.0.0.1:2001").await;
    put(&mut client, "manual", "127.0.0.1:2002").await;
    put(&mut client, "1-junk", "not an address").await;
    put(&mut client, "manual", "10.0.0.1").await;
    delete(&mut client, "1-junk").await;
    put(&mut client, "sentinel", "127.0.0.1:2003").await;
    assert_eq!(
        next_changes(&mut watch, 4, SOON).await,
        [
            "+manual=127.0.0.1:2001",
            "+manual=127.0.0.1:2002",
            "-manual",
            "+sentinel=127.0.0.1:2003"
        ]
    );
    for (key, value) in [
        ("0-junk", "junk"),
        ("1-junk", "not an address"),
        ("manual", "10.0.0.1"),
    ] {
        let key = format!("{PREFIX}{key}");
        let warned = logs.records().into_iter().any(|record| {
            record.level == tracing::Level::WARN
                && record.field("key") == Some(key.as_str())
                && record.field("value") == Some(value)
        });
        assert!(warned, "no warning naming {key} = {value:?}");
    }

    drop(watch);
    until_watchers(&etcd, 0.0, SOON).await;
    drop((b, c));
}

/// A replica dies (no revoke): the watch removes it once its lease has lapsed, within the TTL
/// (plus slack; the figure is printed), and sends nothing else: the next change is a put made
/// after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_leaves_the_watch_within_its_ttl() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut replicas = [
        MortalReplica::start("replica-a", etcd.endpoint(), PREFIX, TTL).await,
        MortalReplica::start("replica-b", etcd.endpoint(), PREFIX, TTL).await,
    ];
    let mut keyed: Vec<String> = replicas
        .iter()
        .map(|r| format!("+{}={}", r.key.strip_prefix(PREFIX).unwrap(), r.addr))
        .collect();
    keyed.sort();
    let catalog = Catalog::new([etcd.endpoint()], PREFIX).unwrap();
    let mut watch = catalog.watch();
    assert_eq!(next_changes(&mut watch, 2, SOON).await, keyed);

    let killed_at = Instant::now();
    replicas[0].kill().await;
    let removed = next_changes(&mut watch, 1, TTL + SLACK).await;
    let elapsed = killed_at.elapsed();
    println!("dead replica removed {elapsed:?} after the kill (TTL {TTL:?})");
    assert_eq!(
        removed,
        [format!(
            "-{}",
            replicas[0].key.strip_prefix(PREFIX).unwrap()
        )]
    );
    let mut client = etcd_client(&etcd).await;
    put(&mut client, "sentinel", "127.0.0.1:2003").await;
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["+sentinel=127.0.0.1:2003"]
    );
    replicas[1].kill().await;
}

/// A key put and deleted shows the watch open. etcd stops (the watch reaches it through a
/// proxy, which refuses it until told otherwise) and starts again with its data: nothing is
/// removed while it is down (2 s);
/// the retry policy is asked after each failure with 0, 1, 2, ... failures in a row. Changes
/// made after the restart, before the watch could reconnect (a put, a value change, a
/// deletion, a key put and deleted, a value that is not an address, a put of the same value)
/// arrive once the proxy lets it through: each once, in order, and nothing else (the next
/// change is a put made after them). The watch broken once more (connection reset) is asked
/// for with 0 failures again: the count started over once it was back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_keeps_its_replicas_while_etcd_is_down_then_sends_each_change_once() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let proxy = FaultProxy::start(etcd.addr()).await;
    let mut client = etcd_client(&etcd).await;
    put(&mut client, "k1", "127.0.0.1:1001").await;
    put(&mut client, "k2", "127.0.0.1:1002").await;
    let (policy, asked) = recording_policy();
    let catalog = Catalog::new([proxy.addr().to_string()], PREFIX)
        .unwrap()
        .watch_retry_policy(policy);
    let mut watch = catalog.watch();
    assert_eq!(
        next_changes(&mut watch, 2, SOON).await,
        ["+k1=127.0.0.1:1001", "+k2=127.0.0.1:1002"]
    );
    put(&mut client, "k0", "127.0.0.1:1000").await;
    delete(&mut client, "k0").await;
    assert_eq!(
        next_changes(&mut watch, 2, SOON).await,
        ["+k0=127.0.0.1:1000", "-k0"],
        "the watch is open"
    );

    proxy.set_mode(Mode::Refuse).await;
    etcd.stop().await;
    no_change_for(&mut watch, Duration::from_secs(2), "etcd is down").await;
    let failures = asked.lock().unwrap().clone();
    println!("while etcd was down, the policy was asked with {failures:?}");
    assert!(failures.len() >= 2, "the watch retried: {failures:?}");
    let counted: Vec<u32> = (0..).take(failures.len()).collect();
    assert_eq!(failures, counted, "failures in a row, counted from 0");

    etcd.start_again().await;
    let mut client = etcd_client(&etcd).await;
    put(&mut client, "k3", "127.0.0.1:1003").await;
    put(&mut client, "k1", "127.0.0.1:1011").await;
    delete(&mut client, "k2").await;
    put(&mut client, "k4", "127.0.0.1:1004").await;
    delete(&mut client, "k4").await;
    put(&mut client, "k5", "junk").await;
    put(&mut client, "k1", "127.0.0.1:1011").await;
    no_change_for(
        &mut watch,
        Duration::from_millis(300),
        "the proxy still refuses",
    )
    .await;

    let opened_at = Instant::now();
    proxy.set_mode(Mode::Forward).await;
    let caught_up = next_changes(&mut watch, 5, SOON).await;
    println!(
        "caught up {:?} after the proxy let the watch through",
        opened_at.elapsed()
    );
    assert_eq!(
        caught_up,
        [
            "+k3=127.0.0.1:1003",
            "+k1=127.0.0.1:1011",
            "-k2",
            "+k4=127.0.0.1:1004",
            "-k4"
        ]
    );
    put(&mut client, "k6", "127.0.0.1:1006").await;
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["+k6=127.0.0.1:1006"],
        "nothing repeated before it"
    );

    let asked_before = asked.lock().unwrap().len();
    proxy.set_mode(Mode::Reset).await;
    proxy.set_mode(Mode::Forward).await;
    put(&mut client, "k7", "127.0.0.1:1007").await;
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["+k7=127.0.0.1:1007"]
    );
    let deadline = Instant::now() + SOON;
    while asked.lock().unwrap().len() == asked_before {
        assert!(Instant::now() < deadline, "the reset was not a failure");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_reset = asked.lock().unwrap()[asked_before];
    assert_eq!(
        after_reset, 0,
        "the count started over once the watch was back"
    );
}

/// While the watch is disconnected (etcd stopped, then a proxy refusing it), keys are deleted,
/// changed, added, added and deleted, made invalid; then etcd compacts its history past them
/// all. When the watch is let through, it cannot resume (its revision is compacted): it reads
/// the prefix again and sends exactly the difference (removals, then insertions, each in key
/// order), says so in the log, and follows the changes after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_whose_history_was_compacted_sends_exactly_the_difference() {
    let logs = logs::LogRecorder::global();
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let proxy = FaultProxy::start(etcd.addr()).await;
    let mut client = etcd_client(&etcd).await;
    for n in 1..=3 {
        put(&mut client, &format!("k{n}"), &format!("127.0.0.1:100{n}")).await;
    }
    let catalog = Catalog::new([proxy.addr().to_string()], PREFIX)
        .unwrap()
        .watch_retry_policy(|| Duration::from_millis(100));
    let mut watch = catalog.watch();
    assert_eq!(
        next_changes(&mut watch, 3, SOON).await,
        [
            "+k1=127.0.0.1:1001",
            "+k2=127.0.0.1:1002",
            "+k3=127.0.0.1:1003"
        ]
    );
    put(&mut client, "k0", "127.0.0.1:1000").await;
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["+k0=127.0.0.1:1000"],
        "the watch is open"
    );
    let compactions_before = compaction_warnings(logs);

    proxy.set_mode(Mode::Refuse).await;
    etcd.stop().await;
    no_change_for(&mut watch, Duration::from_secs(1), "etcd is down").await;
    etcd.start_again().await;
    let mut client = etcd_client(&etcd).await;
    delete(&mut client, "k1").await;
    put(&mut client, "k2", "127.0.0.1:1012").await;
    put(&mut client, "k4", "127.0.0.1:1004").await;
    put(&mut client, "k5", "127.0.0.1:1005").await;
    delete(&mut client, "k5").await;
    put(&mut client, "k3", "junk").await;
    let revision = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    client
        .compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("etcd compacts");
    println!("compacted at revision {revision}");

    proxy.set_mode(Mode::Forward).await;
    assert_eq!(
        next_changes(&mut watch, 4, SOON).await,
        ["-k1", "-k3", "+k2=127.0.0.1:1012", "+k4=127.0.0.1:1004"]
    );
    assert_eq!(
        compaction_warnings(logs),
        compactions_before + 1,
        "the watch said it read the prefix again"
    );
    put(&mut client, "k6", "127.0.0.1:1006").await;
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["+k6=127.0.0.1:1006"],
        "nothing else, and the watch goes on"
    );
}

/// How many warnings of a watch that found its history compacted the log holds (only one
/// test of this binary compacts).
fn compaction_warnings(logs: &logs::LogRecorder) -> usize {
    logs.records()
        .into_iter()
        .filter(|record| {
            record.level == tracing::Level::WARN && record.message.contains("were compacted")
        })
        .count()
}

/// etcd falls silent (a proxy drops every byte, both ways, as a network partition would):
/// nothing is sent meanwhile, and the watch notices within the HTTP/2 keep-alive of its
/// connection (a ping every 10 s, answered within the request timeout, 1 s here), then tries
/// again. Once etcd is reachable again, the change made meanwhile arrives, once. Figures are
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_etcd_is_noticed_by_the_keep_alive_and_the_watch_catches_up() {
    const PING_INTERVAL: Duration = Duration::from_secs(10);
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let proxy = FaultProxy::start(etcd.addr()).await;
    let mut client = etcd_client(&etcd).await;
    put(&mut client, "k1", "127.0.0.1:1001").await;
    let (policy, asked) = recording_policy();
    let catalog = Catalog::new([proxy.addr().to_string()], PREFIX)
        .unwrap()
        .request_timeout(REQUEST_TIMEOUT)
        .watch_retry_policy(policy);
    let mut watch = catalog.watch();
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["+k1=127.0.0.1:1001"]
    );
    put(&mut client, "k0", "127.0.0.1:1000").await;
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["+k0=127.0.0.1:1000"],
        "the watch is open"
    );

    proxy.set_mode(Mode::Blackhole).await;
    let silent_at = Instant::now();
    put(&mut client, "k2", "127.0.0.1:1002").await;
    let bound = PING_INTERVAL + REQUEST_TIMEOUT + SLACK;
    let noticed = tokio::select! {
        change = watch.next() => panic!(
            "etcd is silent, yet the watch sent {:?}",
            change.as_ref().map(describe)
        ),
        noticed = async {
            while asked.lock().unwrap().is_empty() {
                assert!(silent_at.elapsed() < bound, "the watch did not notice within {bound:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            silent_at.elapsed()
        } => noticed,
    };
    println!(
        "the watch noticed the silence {noticed:?} after it began (ping every {PING_INTERVAL:?})"
    );

    proxy.set_mode(Mode::Forward).await;
    let back_at = Instant::now();
    assert_eq!(
        next_changes(&mut watch, 1, PING_INTERVAL + REQUEST_TIMEOUT + SLACK).await,
        ["+k2=127.0.0.1:1002"]
    );
    println!(
        "caught up {:?} after etcd was reachable again; the policy was asked with {:?}",
        back_at.elapsed(),
        asked.lock().unwrap()
    );
    put(&mut client, "k3", "127.0.0.1:1003").await;
    assert_eq!(
        next_changes(&mut watch, 1, SOON).await,
        ["+k3=127.0.0.1:1003"],
        "nothing repeated before it"
    );
}

/// The watch under `replicas::Replicas`: a balanced client over the registered replicas
/// connects to each (both answer within 40 requests); a replica that deregisters leaves the
/// set, and then every request goes to the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balanced_client_over_the_watch_follows_the_registrations() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let (a, b) = (
        H2Server::start("replica-a").await,
        H2Server::start("replica-b").await,
    );
    let leaving = register_server(&etcd, &a).await;
    let _staying = register_server(&etcd, &b).await;
    let catalog = Catalog::new([etcd.endpoint()], PREFIX).unwrap();
    let layer = PersistentConnectionLayer::new(catalog.clone())
        .server_name("billing")
        .retry_delay(|| RETRY_DELAY);
    let replicas = Replicas::http2(catalog.watch(), layer, Http2Connector::<Body>::new());
    let set = replicas.set();
    let mut client = replicas.balanced(64);

    let mut answered = std::collections::BTreeSet::new();
    for n in 0..40 {
        answered.insert(replica_of(&get_ok(&mut client, &format!("/{n}")).await));
        if answered.len() == 2 {
            break;
        }
    }
    assert_eq!(
        answered.into_iter().collect::<Vec<_>>(),
        ["replica-a", "replica-b"]
    );

    let leaving_key = leaving.key().to_owned();
    leaving.deregister().await.unwrap();
    let deadline = Instant::now() + SOON;
    while set.keys().contains(&leaving_key) {
        assert!(
            Instant::now() < deadline,
            "the deregistered replica is still in the set: {set:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..10 {
        let answer = get_ok(&mut client, &format!("/after/{n}")).await;
        assert_eq!(replica_of(&answer), "replica-b", "{answer}");
    }
}
