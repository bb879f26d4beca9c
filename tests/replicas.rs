//! `replicas::Replicas` and its `BalancedClient` over an in-process catalog
//! (`discovery::LocalCatalog`) of real HTTP/2 servers on 127.0.0.1: replicas connect when
//! listed, a killed replica is routed around at once and never evicted while listed, a removed
//! one leaves the balancer after its requests in flight have finished, an added one takes
//! traffic, a removal while the balancer waits on that replica loses no request, and with every
//! replica down requests wait, or fail fast under `FailFastLayer`.
#![cfg(feature = "hyper")]

#[path = "support/h2server.rs"]
mod h2server;
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use h2server::H2Server;
use persistent_connection::{
    PersistentConnectionLayer, State,
    discovery::LocalCatalog,
    failfast::Unavailable,
    http::{Http2Connection, Http2Connector},
    replicas::{BalancedClient, ReplicaSet, Replicas},
};
use support::*;
use tokio::{task::JoinSet, time::Instant};
use tower::ServiceExt;

const RETRY_DELAY: Duration = Duration::from_millis(200);

type Client = BalancedClient<http::Request<Body>, http::Response<hyper::body::Incoming>>;
type Set = ReplicaSet<String, Http2Connection<Body>>;

/// Three servers, listed in a catalog under `r0`..`r2`.
async fn three_replicas() -> (Vec<H2Server>, LocalCatalog<String, std::net::SocketAddr>) {
    let catalog = LocalCatalog::new();
    let mut servers = Vec::new();
    for n in 0..3 {
        let server = H2Server::start(&format!("r{n}")).await;
        catalog.insert(format!("r{n}"), server.addr());
        servers.push(server);
    }
    (servers, catalog)
}

/// The balanced client over `catalog`, named "billing", and the view of its replicas.
fn client(catalog: &LocalCatalog<String, std::net::SocketAddr>) -> (Client, Set) {
    let layer = PersistentConnectionLayer::new(catalog.clone())
        .server_name("billing")
        .retry_delay(|| RETRY_DELAY);
    let replicas = Replicas::http2(catalog.watch(), layer, Http2Connector::new());
    let set = replicas.set();
    (replicas.balanced(1024), set)
}

/// Sends `n` requests, 16 at a time; returns how many each server answered (by name) and
/// the errors.
async fn send(client: &Client, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let (answered, failed) = send_timed(client, n).await;
    (
        answered,
        failed.into_iter().map(|(_, error)| error).collect(),
    )
}

/// [`send`], with the time each failed request was sent.
async fn send_timed(client: &Client, n: usize) -> (HashMap<String, usize>, Vec<(Instant, String)>) {
    let answered = Arc::new(Mutex::new(HashMap::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = JoinSet::new();
    for worker in 0..16 {
        let mut client = client.clone();
        let (answered, errors) = (answered.clone(), errors.clone());
        tasks.spawn(async move {
            for i in (worker..n).step_by(16) {
                let sent = Instant::now();
                match get(&mut client, &format!("/{i}")).await {
                    Ok(body) => {
                        let server = body.split(' ').next().unwrap_or_default().to_owned();
                        *answered.lock().unwrap().entry(server).or_insert(0) += 1;
                    }
                    Err(error) => errors.lock().unwrap().push((sent, error.to_string())),
                }
            }
        });
    }
    within(secs(30), "the requests", async {
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    })
    .await;
    let answered = answered.lock().unwrap().clone();
    let errors = errors.lock().unwrap().clone();
    (answered, errors)
}

async fn until_connected(set: &Set, keys: &[&str]) {
    within(SOON, "the replicas to connect", async {
        loop {
            let states = set.states();
            let connected = keys.iter().all(|key| {
                states
                    .iter()
                    .any(|(k, state)| k == key && *state == State::Connected)
            });
            if connected {
                return;
            }
            tokio::time::sleep(ms(5)).await;
        }
    })
    .await;
}

/// Waits (bounded) until no replica of `set` is connected any more.
async fn every_replica_seen_down(set: &Set) {
    within(SOON, "every replica to be seen down", async {
        while set
            .states()
            .iter()
            .any(|(_, state)| *state == State::Connected)
        {
            tokio::time::sleep(ms(1)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_replica_connects_at_once_and_takes_requests() {
    let (servers, catalog) = three_replicas().await;
    let (client, set) = client(&catalog);
    // Connected before any request: each replica connects as soon as it is listed.
    until_connected(&set, &["r0", "r1", "r2"]).await;
    let (answered, errors) = send(&client, 300).await;
    println!("answered: {answered:?}");
    assert!(errors.is_empty(), "{errors:?}");
    for server in &servers {
        assert_eq!(server.counts().accepted, 1, "one connection per replica");
    }
    for name in ["r0", "r1", "r2"] {
        assert!(
            answered.get(name).copied().unwrap_or(0) > 0,
            "{name} took no request: {answered:?}"
        );
    }
    assert_eq!(answered.values().sum::<usize>(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_routed_around_kept_while_listed_and_leaves_when_removed() {
    let (servers, catalog) = three_replicas().await;
    let (client, set) = client(&catalog);
    until_connected(&set, &["r0", "r1", "r2"]).await;

    // Kill r1 while requests flow: only requests sent before its connection was known dead
    // may fail; none sent after.
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { send_timed(&client, 1000).await })
    };
    servers[0].wait_for(SOON, |c| c.requests >= 50).await;
    let r1 = set.handle(&"r1".to_owned()).unwrap();
    servers[1].kill().await;
    let disconnected = within(SOON, "r1 to be seen disconnected", async {
        while r1.state() == State::Connected {
            tokio::time::sleep(ms(1)).await;
        }
        Instant::now()
    })
    .await;
    let (answered, errors) = within(secs(30), "1,000 requests", sending).await.unwrap();
    println!(
        "answered {answered:?}; {} failed, sent at most {:?} before r1 was seen disconnected",
        errors.len(),
        errors.iter().map(|(sent, _)| disconnected - *sent).max()
    );
    assert_eq!(answered.values().sum::<usize>() + errors.len(), 1000);
    assert!(
        errors.len() <= 16,
        "at most the requests in flight on r1 fail: {errors:?}"
    );
    for (sent, error) in &errors {
        assert!(
            *sent <= disconnected,
            "a request sent after r1 was known dead failed: {error}"
        );
    }
    // Still listed: kept (Connecting, retried), never evicted.
    assert!(set.keys().contains(&"r1".to_owned()));
    assert_ne!(
        set.handle(&"r1".to_owned()).unwrap().state(),
        State::Connected
    );
    let (_, errors) = send(&client, 200).await;
    assert!(errors.is_empty(), "requests go to r0 and r2: {errors:?}");

    // Removed from the catalog: leaves the set.
    catalog.remove(&"r1".to_owned());
    within(SOON, "r1 to leave", async {
        while set.keys().contains(&"r1".to_owned()) {
            tokio::time::sleep(ms(5)).await;
        }
    })
    .await;
    // Listed again and back up: it takes requests again.
    servers[1].restart().await;
    catalog.insert("r1".to_owned(), servers[1].addr());
    until_connected(&set, &["r1"]).await;
    let (answered, errors) = send(&client, 300).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert!(answered.get("r1").copied().unwrap_or(0) > 0, "{answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_added_to_the_catalog_takes_traffic_without_any_client_change() {
    let (_servers, catalog) = three_replicas().await;
    let (client, set) = client(&catalog);
    until_connected(&set, &["r0", "r1", "r2"]).await;
    let fourth = H2Server::start("r3").await;
    catalog.insert("r3".to_owned(), fourth.addr());
    until_connected(&set, &["r3"]).await;
    let (answered, errors) = send(&client, 400).await;
    println!("answered: {answered:?}");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(answered.get("r3").copied().unwrap_or(0) > 0, "{answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_replica_finishes_its_requests_in_flight_then_closes() {
    let (servers, catalog) = three_replicas().await;
    // Only r0 listed at first, so the held requests all go to it.
    catalog.remove(&"r1".to_owned());
    catalog.remove(&"r2".to_owned());
    let (client, set) = client(&catalog);
    until_connected(&set, &["r0"]).await;
    servers[0].hold(true);
    let requests: Vec<_> = (0..8).map(|_| spawn_get(&client, "/held")).collect();
    servers[0].wait_for(SOON, |c| c.in_flight == 8).await;

    catalog.insert("r1".to_owned(), servers[1].addr());
    catalog.remove(&"r0".to_owned());
    within(SOON, "r0 to leave", async {
        while set.keys().contains(&"r0".to_owned()) {
            tokio::time::sleep(ms(5)).await;
        }
    })
    .await;
    // Its requests in flight finish.
    servers[0].hold(false);
    for request in requests {
        let body = within(SOON, "a request in flight on the removed replica", request)
            .await
            .unwrap()
            .expect("finished, not failed");
        assert!(body.starts_with("r0 "), "{body}");
    }
    // New requests go to r1; the balancer lets go of r0 when it next looks at its replicas
    // (the next request), and r0's connection closes.
    let (answered, errors) = send(&client, 50).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(answered.get("r1"), Some(&50), "{answered:?}");
    servers[0].wait_for(SOON, |c| c.ended == 1).await;
}

/// tower#856: removing an endpoint while the balancer is waiting on it must neither panic nor
/// lose a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_replicas_while_the_balancer_waits_on_them_loses_no_request() {
    let (servers, catalog) = three_replicas().await;
    let (client, set) = client(&catalog);
    until_connected(&set, &["r0", "r1", "r2"]).await;
    // r0 and r1 go down: their endpoints are pending in the balancer.
    servers[0].kill().await;
    servers[1].kill().await;
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { send(&client, 600).await })
    };
    // While requests flow, remove and re-add the pending endpoints repeatedly.
    for round in 0..20 {
        let key = format!("r{}", round % 2);
        catalog.remove(&key);
        tokio::time::sleep(ms(2)).await;
        catalog.insert(key, servers[round % 2].addr());
        tokio::time::sleep(ms(2)).await;
    }
    let (answered, errors) = within(secs(30), "the requests", sending).await.unwrap();
    println!("answered: {answered:?}");
    // Requests in flight on r0/r1 at the kill may fail (at most 16); none is lost.
    assert!(errors.len() <= 16, "{errors:?}");
    assert_eq!(answered.values().sum::<usize>() + errors.len(), 600);
    let (answered, errors) = send(&client, 100).await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(answered.get("r2"), Some(&100), "{answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_down_requests_wait_until_one_is_back() {
    let (servers, catalog) = three_replicas().await;
    let (client, set) = client(&catalog);
    until_connected(&set, &["r0", "r1", "r2"]).await;
    for server in &servers {
        server.kill().await;
    }
    // Every replica is known down first: a request sent before that may be written to a
    // connection the server has just closed, and such a request may have been processed for
    // all the client can tell (DESIGN S16), so it fails instead of waiting.
    every_replica_seen_down(&set).await;
    let waiting: Vec<_> = (0..8).map(|_| spawn_get(&client, "/wait")).collect();
    // Several retry delays pass: the requests still wait.
    tokio::time::sleep(RETRY_DELAY * 3).await;
    assert!(
        waiting.iter().all(|request| !request.is_finished()),
        "a request failed or finished"
    );
    servers[2].restart().await;
    for request in waiting {
        let body = within(SOON, "a waiting request", request)
            .await
            .unwrap()
            .expect("served once r2 is back");
        assert!(body.starts_with("r2 "), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_down_requests_fail_fast_when_the_client_is_set_to() {
    let (servers, catalog) = three_replicas().await;
    let max_unready = Duration::from_millis(300);
    let layer = PersistentConnectionLayer::new(catalog.clone())
        .server_name("billing")
        .retry_delay(|| RETRY_DELAY);
    let replicas =
        Replicas::http2(catalog.watch(), layer, Http2Connector::new()).fail_fast(max_unready);
    let set = replicas.set();
    let front: Client = replicas.balanced(64);
    until_connected(&set, &["r0", "r1", "r2"]).await;
    for server in &servers {
        server.kill().await;
    }
    // Every replica is known down (a request sent before that may go to a dying connection).
    every_replica_seen_down(&set).await;
    let start = Instant::now();
    let error = within(
        SOON,
        "a request",
        front.clone().oneshot(http::Request::new(Body::new())),
    )
    .await
    .expect_err("every replica down");
    let waited = start.elapsed();
    println!("failed fast after {waited:?}: {error}");
    assert!(waited >= max_unready, "it waited the set time first");
    let unavailable = Unavailable::find(&*error).expect("Unavailable");
    assert_eq!(unavailable.server_name(), "billing");
    assert!(
        unavailable.last_connect_error().is_some(),
        "carries a replica's connect error: {error}"
    );
    // Once a replica is back, requests are served again.
    servers[0].restart().await;
    until_connected(&set, &["r0"]).await;
    let mut front = front;
    let body = within(SOON, "a request once r0 is back", async {
        loop {
            match get(&mut front, "/back").await {
                Ok(body) => return body,
                Err(error) => {
                    assert!(Unavailable::find(&*error).is_some(), "{error}");
                    tokio::time::sleep(ms(10)).await;
                }
            }
        }
    })
    .await;
    assert!(body.starts_with("r0 "), "{body}");
}
