//! The balanced client (`replicas::Replicas`) over the replicas registered in a real etcd
//! (`discovery::etcd::Catalog::watch`), each a real HTTP/2 server on 127.0.0.1 that registers
//! itself with a lease (see `support/etcd.rs`; skipped with one line when etcd is not
//! installed, unless `REQUIRE_REAL_SERVERS=1`):
//!
//! - three replicas; 1,000 requests while one dies (its runtime is gone, its lease lapses):
//!   only requests sent before the client knew it dead fail, none after, and it leaves the
//!   balancer when its key disappears; a fourth replica registers and takes traffic without
//!   any change in the client;
//! - etcd restarted while requests flow: the set is kept while etcd is down, and the changes
//!   made once it is back (a replica deregistered, one registered) all reach the client;
//! - every replica down: requests wait, and are served once a replica registers.
#![cfg(feature = "etcd")]

#[path = "support/etcd.rs"]
mod etcd;
#[path = "support/h2server.rs"]
mod h2server;
#[path = "support/mortal.rs"]
mod mortal;
mod support;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd::Etcd;
use h2server::H2Server;
use mortal::MortalReplica;
use persistent_connection::{
    PersistentConnectionLayer, State,
    discovery::etcd::{Catalog, register},
    http::{Http2Connection, Http2Connector},
    replicas::{BalancedClient, ReplicaSet, Replicas},
};
use support::*;
use tokio::{task::JoinSet, time::Instant};

const PREFIX: &str = "/services/billing/";
/// The lease TTL of every registration here: etcd's minimum with default settings.
const TTL: Duration = Duration::from_secs(2);
const RETRY_DELAY: Duration = Duration::from_millis(200);
/// The slack added to every bound on time: for a loaded machine, never a measure.
const SLACK: Duration = Duration::from_secs(5);

type Client = BalancedClient<http::Request<Body>, http::Response<hyper::body::Incoming>>;
type Set = ReplicaSet<String, Http2Connection<Body>>;

/// The balanced client of the replicas under [`PREFIX`] in `etcd`, and its set.
fn client(etcd: &Etcd) -> (Client, Set) {
    let catalog = Catalog::new([etcd.endpoint()], PREFIX).expect("a catalog");
    let layer = PersistentConnectionLayer::new(catalog.clone())
        .server_name("billing")
        .retry_delay(|| RETRY_DELAY)
        .connect_timeout(Duration::from_secs(2));
    let replicas = Replicas::http2(catalog.watch(), layer, Http2Connector::new());
    let set = replicas.set();
    (replicas.balanced(1024), set)
}

/// Polls (every 10 ms, at most `bound`) until `done` holds of the set's keys.
async fn until_keys(set: &Set, what: &str, bound: Duration, done: impl Fn(&[String]) -> bool) {
    within(bound, what, async {
        while !done(&set.keys()) {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
}

/// Requests sent by 16 loops until told to stop: per replica answered, and the failures with
/// the time each failed request was sent.
#[derive(Default)]
struct Tally {
    answered: HashMap<String, usize>,
    failed: Vec<(Instant, String)>,
}

fn traffic(client: &Client, n: usize) -> tokio::task::JoinHandle<Tally> {
    let client = client.clone();
    tokio::spawn(async move {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut loops = JoinSet::new();
        for worker in 0..16 {
            let mut client = client.clone();
            let tally = tally.clone();
            loops.spawn(async move {
                for i in (worker..n).step_by(16) {
                    let sent = Instant::now();
                    let outcome = get(&mut client, &format!("/{i}")).await;
                    let mut tally = tally.lock().unwrap();
                    match outcome {
                        Ok(body) => {
                            let replica = body.split(' ').next().unwrap_or_default().to_owned();
                            *tally.answered.entry(replica).or_insert(0) += 1;
                        }
                        Err(error) => tally.failed.push((sent, error.to_string())),
                    }
                }
            });
        }
        while let Some(done) = loops.join_next().await {
            done.unwrap();
        }
        Arc::try_unwrap(tally)
            .ok()
            .expect("every loop is done")
            .into_inner()
            .unwrap()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_replica_leaves_with_its_key_and_a_new_one_takes_traffic() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut replicas = Vec::new();
    for name in ["r1", "r2", "r3"] {
        replicas.push(MortalReplica::start(name, etcd.endpoint(), PREFIX, TTL).await);
    }
    let (client, set) = client(&etcd);
    until_keys(&set, "three replicas", SOON, |keys| keys.len() == 3).await;

    // 1,000 requests; r1 dies while they flow.
    let running = traffic(&client, 1000);
    tokio::time::sleep(ms(100)).await;
    let r1 = set.handle(&replicas[0].key).expect("r1 listed");
    let killed = Instant::now();
    replicas[0].kill().await;
    let known_dead = within(SOON, "r1 to be seen down", async {
        while r1.state() == State::Connected {
            tokio::time::sleep(ms(1)).await;
        }
        Instant::now()
    })
    .await;
    let tally = within(secs(60), "1,000 requests", running).await.unwrap();
    let answered: usize = tally.answered.values().sum();
    println!(
        "answered {:?}; {} failed; r1 seen down {:?} after the kill",
        tally.answered,
        tally.failed.len(),
        known_dead - killed
    );
    assert_eq!(answered + tally.failed.len(), 1000, "no request lost");
    assert!(
        tally.failed.len() <= 16,
        "at most those in flight: {:?}",
        tally.failed
    );
    for (sent, error) in &tally.failed {
        assert!(
            *sent <= known_dead,
            "a request sent after r1 was known dead failed: {error}"
        );
    }

    // Its lease lapses: its key, and so the replica, leaves the balancer.
    let key = replicas[0].key.clone();
    until_keys(&set, "r1's key to leave", TTL + SLACK, |keys| {
        !keys.contains(&key)
    })
    .await;
    println!("r1 left the set {:?} after the kill", killed.elapsed());

    // A fourth replica registers: it takes traffic, with no change in the client.
    let r4 = MortalReplica::start("r4", etcd.endpoint(), PREFIX, TTL).await;
    let key = r4.key.clone();
    until_keys(&set, "r4 to be listed", SOON, |keys| keys.contains(&key)).await;
    let tally = within(secs(60), "300 requests", traffic(&client, 300))
        .await
        .unwrap();
    println!("with r4: {:?}", tally.answered);
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    assert!(
        tally.answered.get("r4").copied().unwrap_or(0) > 0,
        "{:?}",
        tally.answered
    );
    assert_eq!(tally.answered.get("r1"), None);
    drop(r4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_mid_run_keeps_the_set_and_the_watch_misses_no_change() {
    let Some(mut etcd) = Etcd::start().await else {
        return;
    };
    let servers = [H2Server::start("r1").await, H2Server::start("r2").await];
    let mut registrations = Vec::new();
    for server in &servers {
        registrations.push(
            register([etcd.endpoint()], PREFIX, server.addr(), TTL)
                .await
                .expect("register"),
        );
    }
    let (client, set) = client(&etcd);
    until_keys(&set, "two replicas", SOON, |keys| keys.len() == 2).await;
    let before = set.keys();

    // etcd goes down while requests flow: they are served, and the set is kept.
    let running = traffic(&client, 600);
    etcd.stop().await;
    let tally = within(secs(60), "600 requests with etcd down", running)
        .await
        .unwrap();
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    assert_eq!(set.keys(), before, "the set is kept while etcd is down");

    // etcd is back: a replica deregisters and another registers. Both changes reach the client.
    etcd.start_again().await;
    let third = H2Server::start("r3").await;
    let first = registrations.remove(0);
    let gone = first.key().to_owned();
    first.deregister().await.expect("deregister r1");
    let added = register([etcd.endpoint()], PREFIX, third.addr(), TTL)
        .await
        .expect("register r3");
    let new = added.key().to_owned();
    until_keys(
        &set,
        "the changes made after etcd's restart",
        TTL + SLACK,
        |keys| keys.contains(&new) && !keys.contains(&gone),
    )
    .await;
    let tally = within(secs(60), "300 requests", traffic(&client, 300))
        .await
        .unwrap();
    println!("after the restart: {:?}", tally.answered);
    assert!(tally.failed.is_empty(), "{:?}", tally.failed);
    assert!(
        tally.answered.get("r3").copied().unwrap_or(0) > 0,
        "{:?}",
        tally.answered
    );
    assert_eq!(tally.answered.get("r1"), None, "r1 deregistered");
    drop((added, registrations));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_replica_down_requests_wait_for_one_to_register() {
    let Some(etcd) = Etcd::start().await else {
        return;
    };
    let mut replica = MortalReplica::start("r1", etcd.endpoint(), PREFIX, TTL).await;
    let (client, set) = client(&etcd);
    until_keys(&set, "r1", SOON, |keys| keys.len() == 1).await;
    replica.kill().await;
    until_keys(&set, "r1's key to lapse", TTL + SLACK, |keys| {
        keys.is_empty()
    })
    .await;

    let waiting: Vec<_> = (0..8).map(|_| spawn_get(&client, "/wait")).collect();
    // Several retry delays pass with no replica at all: the requests wait.
    tokio::time::sleep(RETRY_DELAY * 3).await;
    assert!(waiting.iter().all(|request| !request.is_finished()));
    let server = H2Server::start("r2").await;
    let registration = register([etcd.endpoint()], PREFIX, server.addr(), TTL)
        .await
        .expect("register r2");
    for request in waiting {
        let body = within(SOON, "a waiting request", request)
            .await
            .unwrap()
            .expect("served once r2 registered");
        assert!(body.starts_with("r2 "), "{body}");
    }
    drop((registration, replica.addr));
}
