//! Watching a catalog: a stream of `tower::discover::Change`s, and the in-process catalog and
//! fixed list that offer one.

use std::{
    collections::BTreeMap,
    fmt,
    future::Ready,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures_util::{Stream, StreamExt, stream};
use tokio::sync::watch;
use tower::discover::Change;

use super::AddressSource;

/// The replicas a catalog lists, as they change: each replica's key and address. A stream
/// starts with an [`Insert`](Change::Insert) for each replica listed now, then follows the
/// catalog (an address that changes under the same key is a new `Insert`). It never ends
/// and never fails: a catalog that cannot be reached keeps its last known set while its
/// watch is re-established, and says so in the log.
///
/// The replicas adaptor, [`Replicas`](crate::replicas::Replicas), turns it into one
/// persistent connection per replica.
pub type Changes<K, A> = Pin<Box<dyn Stream<Item = Change<K, A>> + Send>>;

/// What changed from `old` to `new`: removals first, then insertions (new keys, and keys
/// whose address changed).
pub(crate) fn diff<K, A>(old: &BTreeMap<K, A>, new: &BTreeMap<K, A>) -> Vec<Change<K, A>>
where
    K: Ord + Clone,
    A: PartialEq + Clone,
{
    let removed = old
        .keys()
        .filter(|key| !new.contains_key(*key))
        .map(|key| Change::Remove(key.clone()));
    let inserted = new
        .iter()
        .filter(|(key, address)| old.get(*key) != Some(*address))
        .map(|(key, address)| Change::Insert(key.clone(), address.clone()));
    removed.chain(inserted).collect()
}

/// A stream of the changes between the successive sets `sets` yields, from an empty set;
/// pending forever once `sets` ends (the last set stays).
pub(crate) fn changes_of<K, A>(
    sets: impl Stream<Item = BTreeMap<K, A>> + Send + 'static,
) -> Changes<K, A>
where
    K: Ord + Clone + Send + 'static,
    A: PartialEq + Clone + Send + 'static,
{
    let sets = sets.chain(stream::pending());
    Box::pin(
        sets.scan(BTreeMap::new(), |known, set| {
            let changes = diff(known, &set);
            *known = set;
            std::future::ready(Some(stream::iter(changes)))
        })
        .flatten(),
    )
}

/// The changes of a fixed list: an [`Insert`](Change::Insert) for each address (its own key),
/// then nothing more.
pub fn fixed_list<A>(addresses: impl IntoIterator<Item = A>) -> Changes<A, A>
where
    A: Ord + Clone + Send + 'static,
{
    let set: BTreeMap<A, A> = addresses
        .into_iter()
        .map(|address| (address.clone(), address))
        .collect();
    changes_of(stream::once(std::future::ready(set)))
}

/// An in-process catalog that tests, demos and in-process registries change by hand: a set of
/// replicas (key and address) that is an [`AddressSource`] (each attempt takes the next
/// replica in key order) and offers a [`watch`](Self::watch) of its changes.
///
/// Clones share the catalog.
///
/// # Example
///
/// ```
/// use persistent_connection::discovery::LocalCatalog;
///
/// let catalog = LocalCatalog::new();
/// catalog.insert("billing-1", "127.0.0.1:8081".to_string());
/// catalog.insert("billing-2", "127.0.0.1:8082".to_string());
/// catalog.remove(&"billing-1");
/// assert_eq!(catalog.replicas(), [("billing-2", "127.0.0.1:8082".to_string())]);
/// ```
pub struct LocalCatalog<K, A> {
    set: Arc<watch::Sender<BTreeMap<K, A>>>,
    next: Arc<AtomicUsize>,
}

impl<K, A> LocalCatalog<K, A> {
    /// An empty catalog.
    pub fn new() -> Self {
        Self {
            set: Arc::new(watch::Sender::new(BTreeMap::new())),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl<K: Ord, A: PartialEq> LocalCatalog<K, A> {
    /// Lists `address` under `key` (replacing the address listed under it, if any).
    pub fn insert(&self, key: K, address: A) {
        self.set.send_if_modified(|set| {
            let changed = set.get(&key) != Some(&address);
            if changed {
                set.insert(key, address);
            }
            changed
        });
    }

    /// Removes the replica listed under `key`, returning its address.
    pub fn remove(&self, key: &K) -> Option<A> {
        let mut removed = None;
        self.set.send_if_modified(|set| {
            removed = set.remove(key);
            removed.is_some()
        });
        removed
    }
}

impl<K: Clone, A: Clone> LocalCatalog<K, A> {
    /// The replicas listed now, in key order.
    pub fn replicas(&self) -> Vec<(K, A)> {
        self.set
            .borrow()
            .iter()
            .map(|(key, address)| (key.clone(), address.clone()))
            .collect()
    }
}

impl<K, A> LocalCatalog<K, A>
where
    K: Ord + Clone + Send + Sync + 'static,
    A: PartialEq + Clone + Send + Sync + 'static,
{
    /// The catalog's changes, from the replicas listed now. Changes made in quick succession
    /// may arrive as their sum (an insert then a remove of the same key, as nothing).
    pub fn watch(&self) -> Changes<K, A> {
        let receiver = self.set.subscribe();
        let sets = stream::unfold((receiver, true), |(mut receiver, first)| async move {
            if !first && receiver.changed().await.is_err() {
                // Every handle to the catalog is gone: its last set stays.
                return None;
            }
            let set = receiver.borrow_and_update().clone();
            Some((set, (receiver, false)))
        });
        changes_of(sets)
    }
}

impl<K, A> AddressSource<A> for LocalCatalog<K, A>
where
    K: Send + Sync + 'static,
    A: Clone + Send + Sync + 'static,
{
    type Error = EmptyCatalog;
    type Future = Ready<Result<A, EmptyCatalog>>;

    fn get_address(&self) -> Self::Future {
        let set = self.set.borrow();
        let address = match set.len() {
            0 => Err(EmptyCatalog(())),
            len => {
                let index = self.next.fetch_add(1, Ordering::Relaxed) % len;
                Ok(set.values().nth(index).cloned().expect("index < len"))
            }
        };
        std::future::ready(address)
    }
}

impl<K, A> Clone for LocalCatalog<K, A> {
    fn clone(&self) -> Self {
        Self {
            set: self.set.clone(),
            next: self.next.clone(),
        }
    }
}

impl<K, A> Default for LocalCatalog<K, A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: fmt::Debug, A: fmt::Debug> fmt::Debug for LocalCatalog<K, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCatalog")
            .field("replicas", &*self.set.borrow())
            .finish()
    }
}

/// The error of a lookup in an empty [`LocalCatalog`].
#[derive(Clone, Debug)]
pub struct EmptyCatalog(());

impl fmt::Display for EmptyCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the in-process catalog lists no replica")
    }
}

impl std::error::Error for EmptyCatalog {}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use futures_util::StreamExt;
    use tower::discover::Change;

    use super::{LocalCatalog, diff, fixed_list};
    use crate::discovery::AddressSource;

    fn describe<K: std::fmt::Debug, A: std::fmt::Debug>(changes: &[Change<K, A>]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match change {
                Change::Insert(key, address) => format!("+{key:?}={address:?}"),
                Change::Remove(key) => format!("-{key:?}"),
            })
            .collect()
    }

    #[test]
    fn diff_removes_then_inserts_new_and_changed_keys() {
        let old = BTreeMap::from([(1, "a"), (2, "b"), (3, "c")]);
        let new = BTreeMap::from([(2, "b"), (3, "C"), (4, "d")]);
        assert_eq!(describe(&diff(&old, &new)), ["-1", "+3=\"C\"", "+4=\"d\""]);
        assert!(diff(&new, &new).is_empty());
    }

    #[tokio::test]
    async fn a_watch_starts_with_the_listed_replicas_then_follows_the_catalog() {
        let catalog = LocalCatalog::new();
        catalog.insert("a", 1);
        catalog.insert("b", 2);
        let mut watch = catalog.watch();
        let first: Vec<_> = (&mut watch).take(2).collect().await;
        assert_eq!(describe(&first), ["+\"a\"=1", "+\"b\"=2"]);

        catalog.remove(&"a");
        let next = watch.next().await.unwrap();
        assert_eq!(describe(&[next]), ["-\"a\""]);
        catalog.insert("b", 3);
        let next = watch.next().await.unwrap();
        assert_eq!(describe(&[next]), ["+\"b\"=3"]);
        // Re-inserting the same address changes nothing, so nothing is sent.
        catalog.insert("b", 3);
        catalog.insert("c", 4);
        let next = watch.next().await.unwrap();
        assert_eq!(describe(&[next]), ["+\"c\"=4"]);
    }

    #[tokio::test]
    async fn each_lookup_takes_the_next_replica_and_an_empty_catalog_is_an_error() {
        let catalog = LocalCatalog::new();
        let error = catalog.get_address().await.unwrap_err();
        assert_eq!(error.to_string(), "the in-process catalog lists no replica");
        catalog.insert("a", 1);
        catalog.insert("b", 2);
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(catalog.get_address().await.unwrap());
        }
        assert_eq!(seen, [1, 2, 1, 2]);
    }

    #[tokio::test]
    async fn a_fixed_list_inserts_each_address_once_then_waits() {
        let mut changes = fixed_list(["x", "y"]);
        let first: Vec<_> = (&mut changes).take(2).collect().await;
        assert_eq!(describe(&first), ["+\"x\"=\"x\"", "+\"y\"=\"y\""]);
        assert!(
            futures_util::FutureExt::now_or_never(changes.next()).is_none(),
            "nothing more, and no end"
        );
    }
}
