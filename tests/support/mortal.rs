//! A replica that can die, for the etcd tests: an HTTP/2 server that registers itself in etcd,
//! run on a runtime of its own so that killing it leaves what a killed process leaves (its
//! lease, unrevoked). Included with `#[path]` by tests that also include `h2server.rs` at
//! their root.
#![allow(dead_code, unreachable_pub)]

use std::{net::SocketAddr, sync::mpsc, thread, time::Duration};

use persistent_connection::discovery::etcd::register;

use crate::h2server::H2Server;

/// How long a replica may take to start and register.
const START_BOUND: Duration = Duration::from_secs(6);

/// A replica that can die: an HTTP/2 server and its registration, on a runtime of their own
/// on a thread of their own. [`kill`](Self::kill) shuts that runtime down: the server's
/// sockets close and the keep-alive task stops, and the registration is dropped outside any
/// runtime, so nothing revokes the lease. What remains is what a killed process leaves.
pub struct MortalReplica {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub key: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl MortalReplica {
    pub async fn start(
        name: &'static str,
        endpoint: String,
        prefix: &'static str,
        ttl: Duration,
    ) -> Self {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the replica's runtime");
            let registration = runtime.block_on(async move {
                let server = H2Server::start(name).await;
                let registration = register([endpoint], prefix, server.addr(), ttl)
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
                .recv_timeout(START_BOUND)
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
    pub async fn kill(&mut self) {
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
