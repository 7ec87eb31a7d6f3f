//! The sim's change log: every write to the store, in resourceVersion order, retained
//! for a window so that a watch can resume from any resourceVersion inside it, and
//! broadcast live to the open watches.
//!
//! Responsible for: recording changes (`ADDED`, `MODIFIED`, `DELETED`, each with the
//! object's state at that resourceVersion), answering "everything after RV" or "expired"
//! (the API server's `410 Gone`), and the signals that end open watches on demand
//! (expire, cut). The log is a plain value inside the store, so a change is recorded and
//! broadcast under the same lock as the write, and a watch that replays the log and
//! subscribes under that lock can neither miss nor repeat a change.
//!
//! Not responsible for: HTTP, selectors or shapes of watch events (see `watch`).

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

/// How many changes the log keeps before it forgets the oldest (the API server's watch
/// cache keeps a window too; beyond it a resumed watch gets `410 Gone` and re-lists).
pub(crate) const LOG_CAPACITY: usize = 100_000;

/// How many live signals an open watch may fall behind before it catches up from the
/// log instead (see `watch`).
const LIVE_CAPACITY: usize = 4096;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Created.
    Added,
    /// Changed (the sim uses it for a pod whose deletion has begun).
    Modified,
    /// Deleted; the event carries the last state with a new resourceVersion.
    Deleted,
}

impl Change {
    /// The watch event `type`.
    pub(crate) fn wire(self) -> &'static str {
        match self {
            Change::Added => "ADDED",
            Change::Modified => "MODIFIED",
            Change::Deleted => "DELETED",
        }
    }
}

/// One recorded change.
#[derive(Debug)]
pub(crate) struct Event {
    /// The resourceVersion the change took.
    pub(crate) resource_version: u64,
    /// What happened.
    pub(crate) change: Change,
    /// The plural resource, e.g. `pods`.
    pub(crate) resource: &'static str,
    /// The object's namespace.
    pub(crate) namespace: String,
    /// The whole object as JSON (`apiVersion` and `kind` included).
    pub(crate) object: Value,
}

/// What open watches hear live.
#[derive(Debug, Clone)]
pub(crate) enum Signal {
    /// A change, just recorded.
    Change(Arc<Event>),
    /// The log was forgotten up to `floor`: end with `410 Gone`.
    Expire {
        /// The oldest resourceVersion a watch may now start from.
        floor: u64,
    },
    /// Drop the connection, with no goodbye.
    Cut,
}

/// A watch asked for changes the log no longer holds (HTTP `410 Gone`, `Expired`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expired {
    /// The resourceVersion asked for.
    pub(crate) requested: u64,
    /// The oldest resourceVersion a watch may start from.
    pub(crate) floor: u64,
}

impl Expired {
    /// The API server's message: `too old resource version: X (Y)`.
    pub(crate) fn message(&self) -> String {
        format!(
            "too old resource version: {} ({})",
            self.requested, self.floor
        )
    }
}

/// The log and its live channel.
pub(crate) struct EventLog {
    events: VecDeque<Arc<Event>>,
    /// Every change after `floor` is in `events`.
    floor: u64,
    capacity: usize,
    live: broadcast::Sender<Signal>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::with_capacity(LOG_CAPACITY)
    }
}

impl EventLog {
    /// A log that keeps the last `capacity` changes.
    pub(crate) fn with_capacity(capacity: usize) -> EventLog {
        EventLog {
            events: VecDeque::new(),
            floor: 0,
            capacity: capacity.max(1),
            live: broadcast::channel(LIVE_CAPACITY).0,
        }
    }

    /// Records a change and tells the open watches.
    pub(crate) fn record(&mut self, event: Event) {
        let event = Arc::new(event);
        self.events.push_back(Arc::clone(&event));
        while self.events.len() > self.capacity {
            if let Some(oldest) = self.events.pop_front() {
                self.floor = oldest.resource_version;
            }
        }
        // No open watch is no error.
        let _ = self.live.send(Signal::Change(event));
    }

    /// Every change after `resource_version`, oldest first, or [`Expired`] when the log
    /// no longer reaches back that far.
    pub(crate) fn since(&self, resource_version: u64) -> Result<Vec<Arc<Event>>, Expired> {
        if resource_version < self.floor {
            return Err(Expired {
                requested: resource_version,
                floor: self.floor,
            });
        }
        let start = self
            .events
            .partition_point(|e| e.resource_version <= resource_version);
        Ok(self.events.range(start..).cloned().collect())
    }

    /// The oldest resourceVersion a watch may start from.
    #[cfg(test)]
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Live signals from now on.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.live.subscribe()
    }

    /// Forgets every change up to `current` and ends the open watches with `410 Gone`.
    pub(crate) fn expire(&mut self, current: u64) {
        self.events.clear();
        self.floor = current;
        let _ = self.live.send(Signal::Expire { floor: current });
    }

    /// Drops the open watches' connections.
    pub(crate) fn cut(&self) {
        let _ = self.live.send(Signal::Cut);
    }

    /// How many watches are subscribed (open watch responses).
    pub(crate) fn subscribers(&self) -> usize {
        self.live.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(rv: u64) -> Event {
        Event {
            resource_version: rv,
            change: Change::Added,
            resource: "pods",
            namespace: "ns".into(),
            object: Value::Null,
        }
    }

    fn versions(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.resource_version).collect()
    }

    #[test]
    fn since_replays_what_came_after_and_expires_what_was_forgotten() {
        let mut log = EventLog::with_capacity(3);
        for rv in 1..=5 {
            log.record(event(rv));
        }
        assert_eq!(log.floor(), 2);
        assert_eq!(versions(&log.since(2).expect("kept")), [3, 4, 5]);
        assert_eq!(versions(&log.since(4).expect("kept")), [5]);
        assert!(log.since(5).expect("current").is_empty());
        let expired = log.since(1).expect_err("forgotten");
        assert_eq!(expired.message(), "too old resource version: 1 (2)");
    }

    #[tokio::test]
    async fn live_watches_hear_changes_and_expiry() {
        let mut log = EventLog::default();
        let mut rx = log.subscribe();
        log.record(event(1));
        log.expire(1);
        assert!(matches!(rx.recv().await, Ok(Signal::Change(e)) if e.resource_version == 1));
        assert!(matches!(rx.recv().await, Ok(Signal::Expire { floor: 1 })));
        assert!(log.since(0).is_err());
        assert!(log.since(1).expect("from the floor").is_empty());
    }
}
