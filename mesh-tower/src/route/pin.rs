//! Each thread's own reference to a store's live snapshot.
//!
//! Every request holds the snapshot it was routed with until it ends, and the layers below
//! clone that reference. Were it the snapshot's own `Arc`, every worker would write the same
//! reference count several times a request (a cache line passed between cores). A thread
//! instead keeps one [`Pinned`] per store for the live snapshot, and requests clone that: its
//! count is written by the thread that made it (by another only when a request moves to it).
//!
//! A thread's entry is replaced when it routes a request after the store published a new
//! snapshot, so an idle thread holds a replaced snapshot until its next request; entries of
//! stores since dropped go when a thread has more than [`PINS_PER_THREAD`] stores.

use mesh_core::store::{ConfigStore, Snapshot};
use std::cell::RefCell;
use std::sync::Arc;

/// A snapshot, held by one thread for the requests it routes.
#[derive(Debug)]
pub(super) struct Pinned(pub(super) Arc<Snapshot>);

/// Stores a thread keeps a pinned snapshot of: a sidecar worker routes with one or two.
const PINS_PER_THREAD: usize = 4;

thread_local! {
    /// By store ([`ConfigStore::id`]), each with the snapshot it pins.
    static PINS: RefCell<Vec<(u64, Arc<Pinned>)>> = const { RefCell::new(Vec::new()) };
}

/// This thread's reference to `store`'s live snapshot (a reference of its own when the thread
/// is exiting and its entries are gone).
///
/// The thread's entry is used while it pins the live version, which the store tells with one
/// atomic load; the snapshot itself is loaded only to pin a new one.
pub(super) fn live(store: &ConfigStore) -> Arc<Pinned> {
    let id = store.id();
    let version = store.version();
    let found = PINS.try_with(|pins| {
        pins.borrow()
            .iter()
            .find(|(k, pin)| *k == id && pin.0.version == version)
            .map(|(_, pin)| pin.clone())
    });
    if let Ok(Some(pin)) = found {
        return pin;
    }
    store.with_current(|current| {
        PINS.try_with(|pins| pinned(&mut pins.borrow_mut(), id, current))
            .unwrap_or_else(|_| Arc::new(Pinned(current.clone())))
    })
}

/// The entry of `pins` for store `key` when it pins `current`, else a new one in its place.
fn pinned(pins: &mut Vec<(u64, Arc<Pinned>)>, key: u64, current: &Arc<Snapshot>) -> Arc<Pinned> {
    let entry = pins.iter().position(|(k, _)| *k == key);
    if let Some(i) = entry
        && Arc::ptr_eq(&pins[i].1.0, current)
    {
        return pins[i].1.clone();
    }
    let pin = Arc::new(Pinned(current.clone()));
    match entry {
        Some(i) => pins[i].1 = pin.clone(),
        None => {
            if pins.len() == PINS_PER_THREAD {
                pins.remove(0);
            }
            pins.push((key, pin.clone()));
        }
    }
    pin
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_core::model::MeshConfig;

    #[test]
    fn a_thread_reuses_its_pin_until_the_store_publishes() {
        let store = ConfigStore::new(MeshConfig::default());
        let first = live(&store);
        assert!(Arc::ptr_eq(&live(&store), &first));
        assert_eq!(first.0.version, 1);
        // Another thread pins the same snapshot with a reference of its own.
        let there = std::thread::scope(|s| s.spawn(|| live(&store)).join().unwrap());
        assert!(!Arc::ptr_eq(&there, &first));
        assert!(Arc::ptr_eq(&there.0, &first.0));
        // A new snapshot: a new pin; requests still holding the old one keep their snapshot.
        store.publish(MeshConfig::default());
        let second = live(&store);
        assert_eq!(second.0.version, 2);
        assert_eq!(first.0.version, 1);
        assert!(Arc::ptr_eq(&live(&store), &second));
    }

    #[test]
    fn a_store_made_after_another_was_dropped_is_not_served_the_dropped_ones_snapshot() {
        for _ in 0..8 {
            // Each at version 1, and likely at the address the one before it had.
            let store = ConfigStore::new(MeshConfig::default());
            assert!(Arc::ptr_eq(&live(&store).0, &store.load()));
        }
    }

    #[test]
    fn stores_are_pinned_apart() {
        let stores: Vec<_> = (0..PINS_PER_THREAD + 1)
            .map(|_| ConfigStore::new(MeshConfig::default()))
            .collect();
        let pins: Vec<_> = stores.iter().map(live).collect();
        for (i, pin) in pins.iter().enumerate() {
            assert!(Arc::ptr_eq(&pin.0, &stores[i].load()), "store {i}");
        }
        // The most recent stores are still pinned; the first was let go.
        assert!(Arc::ptr_eq(
            &live(&stores[PINS_PER_THREAD]),
            &pins[PINS_PER_THREAD]
        ));
    }
}
