//! Replicas: one persistent connection per replica a catalog lists, as a
//! [`tower::discover::Discover`] for tower's balancer, and a ready-made balanced client.
//!
//! [`Replicas`] follows a catalog's [`Changes`]: for each replica listed it makes a persistent
//! connection with the layer's settings (retry policy, hooks, health check, close signal;
//! the replica's key in its server name, so in every log line), which starts connecting at
//! once. A replica removed from the catalog leaves the balancer, and its connection closes
//! once the requests in flight on it have finished. A replica that is down but still listed
//! is `Pending`: the balancer routes around it and never evicts it, and its driver keeps
//! trying with the retry policy. A catalog that cannot be reached keeps its last known set
//! (the catalogs' watches re-establish themselves).
//!
//! [`Replicas::balanced`] builds the usual stack in one expression: each replica measured by
//! its requests in flight ([`PendingRequests`](tower::load::PendingRequests)), tower's power-of-two-choices
//! [`Balance`] over them, and a cloneable [`Buffer`] in front: a [`BalancedClient`]. It is the
//! drop-in for tonic's `Channel::balance_channel`, and a tonic client runs over it as over a
//! `Channel`. [`Replicas::fail_fast`] makes it answer at once once no replica has been ready
//! for a set time.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use persistent_connection::{
//!     BoxError, PersistentConnectionLayer, discovery::LocalCatalog, replicas::Replicas,
//! };
//! use tower::{ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // The catalog: in-process here; `discovery::dns` and `discovery::etcd` watch real ones.
//! let catalog = LocalCatalog::new();
//! catalog.insert("billing-1", "replica one");
//! catalog.insert("billing-2", "replica two");
//!
//! // The maker: each connection answers with the address it was made for.
//! let maker = service_fn(|address: &'static str| async move {
//!     Ok::<_, BoxError>(service_fn(move |request: String| async move {
//!         Ok::<_, BoxError>(format!("{address} got {request}"))
//!     }))
//! });
//!
//! let layer = PersistentConnectionLayer::new(catalog.clone())
//!     .server_name("billing")
//!     .retry_delay(|| Duration::from_millis(500));
//! let client = Replicas::new(catalog.watch(), layer, maker).balanced(64);
//!
//! let reply = client.clone().oneshot("hello".to_string()).await?;
//! assert!(reply.ends_with("got hello"));
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tower::{
    balance::p2c::Balance,
    buffer::Buffer,
    discover::Change,
    load::{CompleteOnResponse, PendingRequestsDiscover},
};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    BoxError, ConnectError, Handle, PersistentConnection, PersistentConnectionLayer, State,
    discovery::Changes,
    failfast::{self, Diagnose, FailFast},
};

/// One persistent connection per replica of a catalog: a [`Discover`](tower::discover::Discover)
/// of [`PersistentConnection`]s keyed by the catalog's keys. See the [module](self).
pub struct Replicas<K, S> {
    /// The changes, each listed replica's connection already made (by [`follow`]).
    changes: mpsc::UnboundedReceiver<Change<K, PersistentConnection<S>>>,
    set: ReplicaSet<K, S>,
    name: Arc<str>,
    /// The balanced client's fail-fast time, if set.
    fail_fast: Option<Duration>,
}

impl<K, S> Replicas<K, S>
where
    K: Ord + std::hash::Hash + Clone + fmt::Display + Send + Sync + 'static,
    S: Clone + Send + 'static,
{
    /// Follows `changes` (a catalog's [`Changes`]), making each replica's persistent
    /// connection from `maker` with the settings of `layer`; its address source is not used,
    /// as each replica connects to its own address.
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime: a task follows the catalog, and each replica's
    /// driver is a Tokio task.
    pub fn new<A, E, C, H, M>(
        changes: Changes<K, A>,
        layer: PersistentConnectionLayer<A, E, C, H>,
        maker: M,
    ) -> Self
    where
        A: Clone + Send + Sync + 'static,
        M: Clone + Send + 'static,
        PersistentConnectionLayer<A, E, C, H>: Layer<M, Service = PersistentConnection<S>>,
        E: Send + Sync + 'static,
        C: Send + Sync + 'static,
        H: Send + Sync + 'static,
    {
        let set = ReplicaSet {
            handles: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let name = layer.explicit_name().unwrap_or("replicas").into();
        let runtime = tokio::runtime::Handle::try_current().unwrap_or_else(|_| {
            panic!(
                "Replicas::new must be called from within a Tokio runtime: it spawns the task \
                 that follows the catalog"
            )
        });
        // The catalog is followed by a task of its own, so each replica starts connecting as
        // soon as it is listed, not when the balancer next looks.
        let (sender, receiver) = mpsc::unbounded_channel();
        runtime.spawn(follow(changes, set.clone(), sender, move |key, address| {
            layer.for_replica(address, key).layer(maker.clone())
        }));
        Self {
            changes: receiver,
            set,
            name,
            fail_fast: None,
        }
    }

    /// The replicas known now, with a handle to each one's connection.
    pub fn set(&self) -> ReplicaSet<K, S> {
        self.set.clone()
    }

    /// Makes the [balanced client](Self::balanced) answer requests at once with
    /// [`Unavailable`](crate::failfast::Unavailable) once no replica has been ready for
    /// `max_unready` (naming the catalog and carrying a replica's last connect error); before
    /// that, and by default, requests wait for a replica. See [`failfast`].
    ///
    /// A [`FailFastLayer`](crate::failfast::FailFastLayer) stacked above the balanced client
    /// would not see the replicas' readiness: the client's buffer is ready whenever it has
    /// room. So the balanced client takes the setting itself, and puts the fail-fast below its
    /// buffer, above the balancer (where linkerd2-proxy puts it).
    pub fn fail_fast(mut self, max_unready: Duration) -> Self {
        self.fail_fast = Some(max_unready);
        self
    }

    /// The usual balanced client over these replicas: each measured by its requests in flight,
    /// tower's p2c [`Balance`] over them, and a [`Buffer`] of `capacity` requests in front,
    /// which makes it cloneable. See [`BalancedClient`].
    ///
    /// # Panics
    ///
    /// If called outside a Tokio runtime (the buffer's worker is a Tokio task).
    pub fn balanced<Req>(self, capacity: usize) -> BalancedClient<Req, PersistentResponse<S, Req>>
    where
        Req: Send + 'static,
        PersistentConnection<S>: Service<Req, Error = BoxError>,
        PersistentResponse<S, Req>: Send + 'static,
        <PersistentConnection<S> as Service<Req>>::Future: Send + 'static,
    {
        let diagnosis: Arc<dyn Diagnose + Send + Sync> = Arc::new(Diagnosis {
            set: self.set.clone(),
            name: self.name.clone(),
        });
        let fail_fast = self.fail_fast;
        let balancer = Balancer {
            balance: Balance::new(PendingRequestsDiscover::new(
                self,
                CompleteOnResponse::default(),
            )),
            diagnosis: diagnosis.clone(),
        };
        let front = match fail_fast {
            Some(max_unready) => FailFast::new(balancer, max_unready),
            None => FailFast::never(balancer),
        };
        BalancedClient {
            buffer: Buffer::new(front, capacity),
            diagnosis,
        }
    }
}

/// Follows `changes`: makes each listed replica's connection at once (`connect`), keeps `set`
/// up to date, and sends each change on to the balancer; ends when the [`Replicas`] is gone.
async fn follow<K, A, S>(
    mut changes: Changes<K, A>,
    set: ReplicaSet<K, S>,
    sender: mpsc::UnboundedSender<Change<K, PersistentConnection<S>>>,
    connect: impl Fn(&K, A) -> PersistentConnection<S>,
) where
    K: Ord + Clone + fmt::Display,
    S: Clone + Send + 'static,
{
    loop {
        let change = tokio::select! {
            () = sender.closed() => return,
            change = changes.next() => change,
        };
        let change = match change {
            // A catalog's watch does not end; if one does, its last set stays.
            None => {
                sender.closed().await;
                return;
            }
            Some(Change::Insert(key, address)) => {
                tracing::debug!(replica = %key, "replica listed: connecting");
                let connection = connect(&key, address);
                if let Some(replaced) = set.insert(key.clone(), connection.handle()) {
                    // Its address changed: the old connection closes as a removed one does.
                    drop(replaced.close());
                }
                Change::Insert(key, connection)
            }
            Some(Change::Remove(key)) => {
                tracing::debug!(replica = %key, "replica no longer listed: leaving the balancer");
                // Closing now (not when the balancer next looks): no new request goes to it,
                // the requests in flight finish on their own.
                if let Some(removed) = set.remove(&key) {
                    drop(removed.close());
                }
                Change::Remove(key)
            }
        };
        if sender.send(change).is_err() {
            return;
        }
    }
}

/// The response type of a persistent connection of `S` to a request of `Req`.
pub type PersistentResponse<S, Req> = <PersistentConnection<S> as Service<Req>>::Response;

impl<K, S> Stream for Replicas<K, S> {
    type Item = Result<Change<K, PersistentConnection<S>>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.changes.poll_recv(cx).map(|change| change.map(Ok))
    }
}

impl<K: fmt::Debug + Clone + Ord, S> fmt::Debug for Replicas<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replicas")
            .field("name", &self.name)
            .field("replicas", &self.set.keys())
            .finish_non_exhaustive()
    }
}

/// The replicas a [`Replicas`] knows now: a cloneable view with a [`Handle`] to each one's
/// persistent connection (to observe it, or reconnect it now).
pub struct ReplicaSet<K, S> {
    handles: Arc<Mutex<BTreeMap<K, Handle<S>>>>,
}

impl<K: Ord + Clone, S> ReplicaSet<K, S> {
    fn insert(&self, key: K, handle: Handle<S>) -> Option<Handle<S>> {
        self.lock().insert(key, handle)
    }

    fn remove(&self, key: &K) -> Option<Handle<S>> {
        self.lock().remove(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<K, Handle<S>>> {
        // A panic elsewhere while holding the lock left a consistent map: go on with it.
        self.handles
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The keys of the replicas known now, in order.
    pub fn keys(&self) -> Vec<K> {
        self.lock().keys().cloned().collect()
    }

    /// The handle of the replica under `key`, if it is known.
    pub fn handle(&self, key: &K) -> Option<Handle<S>> {
        self.lock().get(key).cloned()
    }
}

impl<K: Ord + Clone, S: Clone + Send + 'static> ReplicaSet<K, S> {
    /// Each replica's key and state.
    pub fn states(&self) -> Vec<(K, State)> {
        self.lock()
            .iter()
            .map(|(key, handle)| (key.clone(), handle.state()))
            .collect()
    }

    /// The error of the latest failed attempt among the replicas not connected now.
    fn last_connect_error(&self) -> Option<ConnectError> {
        self.lock()
            .values()
            .filter(|handle| handle.current_connection().is_none())
            .filter_map(|handle| handle.stats().last_error)
            .next()
    }
}

impl<K, S> Clone for ReplicaSet<K, S> {
    fn clone(&self) -> Self {
        Self {
            handles: self.handles.clone(),
        }
    }
}

impl<K: fmt::Debug + Ord + Clone, S> fmt::Debug for ReplicaSet<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ReplicaSet").field(&self.keys()).finish()
    }
}

struct Diagnosis<K, S> {
    set: ReplicaSet<K, S>,
    name: Arc<str>,
}

impl<K, S> Diagnose for Diagnosis<K, S>
where
    K: Ord + Clone + Send + Sync,
    S: Clone + Send + 'static,
{
    fn server_name(&self) -> Arc<str> {
        self.name.clone()
    }

    fn last_connect_error(&self) -> Option<ConnectError> {
        self.set.last_connect_error()
    }
}

/// A boxed response future.
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// The balancer, its response futures boxed (so [`BalancedClient`]'s type names only the
/// request and response types), and what [`FailFast`] says when it fails fast.
struct Balancer<T> {
    balance: T,
    diagnosis: Arc<dyn Diagnose + Send + Sync>,
}

impl<T, Req> Service<Req> for Balancer<T>
where
    T: Service<Req, Error = BoxError>,
    T::Future: Send + 'static,
{
    type Response = T::Response;
    type Error = BoxError;
    type Future = BoxFuture<T::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.balance.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        Box::pin(self.balance.call(request))
    }
}

impl<T> Diagnose for Balancer<T> {
    fn server_name(&self) -> Arc<str> {
        self.diagnosis.server_name()
    }

    fn last_connect_error(&self) -> Option<ConnectError> {
        self.diagnosis.last_connect_error()
    }
}

/// The future of a [`BalancedClient`]'s response.
type Front<Resp> = failfast::ResponseFuture<BoxFuture<Resp>>;

/// A balanced client over the replicas of a catalog, made by [`Replicas::balanced`]: cloneable
/// (clones share the balancer), a `Service<Req>` whose requests go to the least loaded of two
/// ready replicas picked at random, waiting while none is ready.
///
/// With [`Replicas::fail_fast`], it answers [`Unavailable`](crate::failfast::Unavailable) once
/// no replica has been ready for the set time.
pub struct BalancedClient<Req, Resp> {
    buffer: Buffer<Req, Front<Resp>>,
    diagnosis: Arc<dyn Diagnose + Send + Sync>,
}

impl<Req: Send + 'static, Resp: 'static> Clone for BalancedClient<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            buffer: self.buffer.clone(),
            diagnosis: self.diagnosis.clone(),
        }
    }
}

impl<Req, Resp> fmt::Debug for BalancedClient<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedClient")
            .field("name", &self.diagnosis.server_name())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Service<Req> for BalancedClient<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = BoxError;
    type Future = <Buffer<Req, Front<Resp>> as Service<Req>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.buffer.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.buffer.call(request)
    }
}

impl<Req, Resp> Diagnose for BalancedClient<Req, Resp> {
    fn server_name(&self) -> Arc<str> {
        self.diagnosis.server_name()
    }

    fn last_connect_error(&self) -> Option<ConnectError> {
        self.diagnosis.last_connect_error()
    }
}
