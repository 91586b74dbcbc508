//! The replay cache: remembers each accepted `jti` until its token expires.
//!
//! A hash map answers "seen?" and a min-heap ordered by expiry lets every call drop the
//! expired entries from the front, so a request costs O(log n) amortised instead of the
//! prototype's sweep over every entry. Memory is bounded by the tokens still within their
//! lifetime: nothing outlives its `exp`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// A thread-safe set of token ids, each held until its expiry.
#[derive(Debug, Default)]
pub struct ReplayCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Live jti -> expiry.
    live: HashMap<String, DateTime<Utc>>,
    /// The same entries, soonest expiry first. An entry is pushed once when recorded and
    /// popped once when it expires, so the two collections always hold the same ids.
    by_expiry: BinaryHeap<Reverse<(DateTime<Utc>, String)>>,
}

impl Inner {
    fn purge_expired(&mut self, now: DateTime<Utc>) {
        while let Some(Reverse((expires_at, _))) = self.by_expiry.peek() {
            if *expires_at > now {
                break;
            }
            if let Some(Reverse((_, jti))) = self.by_expiry.pop() {
                self.live.remove(&jti);
            }
        }
    }
}

impl ReplayCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `jti` as used until `expires_at`, first forgetting every entry whose expiry is
    /// at or before `now`. Returns `false` when `jti` is still recorded: a replay.
    ///
    /// A token already expired at `now` is not stored (it cannot be presented again).
    pub fn check_and_record(
        &self,
        jti: &str,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> bool {
        let mut inner = self.inner.lock().expect("replay cache lock");
        inner.purge_expired(now);
        if inner.live.contains_key(jti) {
            return false;
        }
        if expires_at > now {
            inner.live.insert(jti.to_string(), expires_at);
            inner.by_expiry.push(Reverse((expires_at, jti.to_string())));
        }
        true
    }

    /// Forgets every entry whose expiry is at or before `now`.
    pub fn purge_expired(&self, now: DateTime<Utc>) {
        self.inner
            .lock()
            .expect("replay cache lock")
            .purge_expired(now);
    }

    /// How many token ids are held (expired ones may linger until the next call).
    pub fn len(&self) -> usize {
        self.inner.lock().expect("replay cache lock").live.len()
    }

    /// True when no token id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("time")
    }

    fn secs(n: i64) -> chrono::Duration {
        chrono::Duration::seconds(n)
    }

    #[test]
    fn second_use_before_expiry_is_a_replay() {
        let cache = ReplayCache::new();
        let now = start();
        assert!(cache.check_and_record("a", now + secs(10), now));
        assert!(!cache.check_and_record("a", now + secs(10), now));
        assert!(!cache.check_and_record("a", now + secs(99), now + secs(9)));
        assert!(cache.check_and_record("b", now + secs(10), now));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn entries_are_freed_at_their_expiry_as_the_clock_advances() {
        let clock = Arc::new(ManualClock::new(start()));
        let cache = ReplayCache::new();
        for (i, ttl) in [30, 10, 20, 10, 40].into_iter().enumerate() {
            let now = clock.now();
            assert!(cache.check_and_record(&format!("jti-{i}"), now + secs(ttl), now));
        }
        assert_eq!(cache.len(), 5);

        clock.advance(Duration::from_secs(9));
        cache.purge_expired(clock.now());
        assert_eq!(cache.len(), 5, "nothing expires before its exp");

        clock.advance(Duration::from_secs(1));
        cache.purge_expired(clock.now());
        assert_eq!(cache.len(), 3, "exp <= now is expired");

        clock.advance(Duration::from_secs(20));
        // A call that records also purges first.
        assert!(cache.check_and_record("late", clock.now() + secs(5), clock.now()));
        assert_eq!(cache.len(), 2, "only jti-4 and late remain");
        assert!(!cache.check_and_record("jti-4", clock.now() + secs(5), clock.now()));
        assert!(cache.check_and_record("jti-0", clock.now() + secs(5), clock.now()));

        clock.advance(Duration::from_secs(3600));
        cache.purge_expired(clock.now());
        assert!(cache.is_empty());
        let inner = cache.inner.lock().expect("lock");
        assert!(inner.by_expiry.is_empty(), "the heap is freed too");
    }

    #[test]
    fn an_already_expired_token_is_not_stored() {
        let cache = ReplayCache::new();
        let now = start();
        assert!(cache.check_and_record("old", now, now));
        assert!(cache.is_empty());
    }
}

#[cfg(test)]
mod properties {
    //! Property tests: the cache against a plain map of live ids, under random uses, expiries
    //! and clock steps.

    use proptest::prelude::*;

    use super::*;

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).expect("time")
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A token id used, expiring this many seconds from now (0 or less: already expired).
        Use(u8, i64),
        Advance(i64),
        Purge,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..8u8, -3i64..30).prop_map(|(jti, ttl)| Op::Use(jti, ttl)),
            3 => (0i64..12).prop_map(Op::Advance),
            1 => Just(Op::Purge),
        ]
    }

    proptest! {
        /// Each id is accepted once until its expiry and again after it; an expired token is
        /// accepted but not kept; the cache holds exactly the ids not yet purged, and its heap
        /// no more than its map.
        #[test]
        fn replay_cache_accepts_each_id_once_per_lifetime(
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let cache = ReplayCache::new();
            let mut model: HashMap<String, DateTime<Utc>> = HashMap::new();
            let mut now = start();
            for op in ops {
                match op {
                    Op::Use(jti, ttl) => {
                        let jti = format!("jti-{jti}");
                        let expires_at = now + chrono::Duration::seconds(ttl);
                        model.retain(|_, exp| *exp > now);
                        let fresh = !model.contains_key(&jti);
                        prop_assert_eq!(cache.check_and_record(&jti, expires_at, now), fresh);
                        if fresh && expires_at > now {
                            model.insert(jti, expires_at);
                        }
                    }
                    Op::Advance(secs) => now += chrono::Duration::seconds(secs),
                    Op::Purge => {
                        cache.purge_expired(now);
                        model.retain(|_, exp| *exp > now);
                    }
                }
                prop_assert_eq!(cache.len(), model.len());
                let inner = cache.inner.lock().expect("lock");
                prop_assert_eq!(inner.by_expiry.len(), inner.live.len());
                prop_assert_eq!(&inner.live, &model);
            }
            cache.purge_expired(now + chrono::Duration::seconds(30));
            prop_assert!(cache.is_empty());
        }
    }
}
