//! Worker property tests: warm targets from random demand, bursts, ceilings and floors, and
//! directory listings paged with random page sizes.

use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::backend::WriteMode;
use crate::warm::MAX_BURST_FACTOR;

fn tuple(i: usize) -> SandboxTuple {
    SandboxTuple::normalize("fake", &format!("img{i}"), 1, "fake")
}

/// Creates, oldest first: (tuple index, milliseconds after the previous create, found no
/// ready sandbox). Runs less than a second apart are bursts.
fn creates() -> impl Strategy<Value = Vec<(usize, i64, bool)>> {
    let gap = prop_oneof![3 => 0i64..300, 1 => 0i64..120_000];
    prop::collection::vec((0..5usize, gap, any::<bool>()), 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The worker's warm targets: within `max_live_sandboxes`; the floors kept while they fit
    /// together; above its floor, a tuple gets no more than its demand, nor more than the
    /// ceiling raised by its bursts (at most four times the ceiling); without floors, exactly
    /// the demand cut to that raised ceiling.
    #[test]
    fn warm_targets_stay_within_ceilings_floors_and_capacity(
        capacity in 0u32..12,
        ceiling in prop::option::of(0u32..4),
        floors in prop::collection::btree_map(0..5usize, 0u32..5, 0..3),
        creates in creates(),
    ) {
        let worker = worker_with(FakeBackend::new(), |c| {
            c.max_live_sandboxes = capacity;
            c.capacity.max_warm_per_tuple = ceiling;
            c.pre_pull = floors
                .iter()
                .map(|(t, n)| PrePullTarget {
                    tuple: tuple(*t),
                    target_count: *n,
                    warmup_script: String::new(),
                    warmup_timeout: Duration::from_secs(1),
                })
                .collect();
        });
        let now = worker.clock.now();
        let mut state = worker.lock();
        let span: i64 = creates.iter().map(|(_, gap, _)| gap).sum();
        let mut at = now - chrono::Duration::milliseconds(span);
        for (t, gap, missed) in &creates {
            at += chrono::Duration::milliseconds(*gap);
            state.demand.record(tuple(*t), at);
            state.bursts.record(&tuple(*t), at, *missed);
        }
        let targets = worker.warm_targets(&mut state);
        // The demand alone (the tracker's own targets are checked in `warm`).
        let demand = state.demand.targets(capacity, now);
        let floor = |t: &SandboxTuple| {
            floors
                .iter()
                .find(|(i, _)| tuple(**i) == *t)
                .map_or(0, |(_, n)| *n)
        };
        let floor_sum: u32 = floors.values().sum();

        prop_assert!(targets.values().sum::<u32>() <= capacity);
        for t in floors.keys() {
            prop_assert!(targets.contains_key(&tuple(*t)));
        }
        for (t, target) in &targets {
            let wanted = demand.get(t).copied().unwrap_or(0);
            let burst = state.bursts.ceiling(t, now);
            let raised = ceiling.map(|c| c.max(burst.min(c * MAX_BURST_FACTOR)));
            if floor_sum <= capacity {
                prop_assert!(*target >= floor(t), "{} below its floor", t);
            }
            prop_assert!(*target <= floor(t).max(wanted), "{} above its demand", t);
            if let Some(raised) = raised {
                prop_assert!(*target <= floor(t).max(raised), "{} above its ceiling", t);
            }
            if floors.is_empty() {
                prop_assert_eq!(*target, raised.map_or(wanted, |r| wanted.min(r)));
            }
        }
    }

    /// Listing a directory page by page, each page of a random size, returns exactly the
    /// one-page listing: every entry once, in byte order; `next_cursor` is where the next
    /// page starts and is absent on the last; a cursor at or past the end lists nothing.
    #[test]
    fn listing_pages_return_every_entry_once_in_order(
        files in prop::collection::btree_set("d[a-c](/d[ab]){0,2}/f[a-c]", 1..20),
        recursive in any::<bool>(),
        limits in prop::collection::vec(prop_oneof![3 => 1usize..5, 1 => 5usize..40], 1..5),
        past in 0usize..4,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let h = Harness::new();
            let sid = h.sandbox().await;
            let (w, p) = (&h.worker, &dev());
            for file in &files {
                let at = path(&format!("/data/{file}"));
                w.write_file(p, &sid, &at, reader(b"1"), WriteMode::Replace)
                    .await
                    .expect("written");
            }
            let list = |limit, cursor| {
                let at = path("/data");
                let sid = &sid;
                async move {
                    w.list_files(p, sid, &at, ListOptions { recursive, limit, cursor })
                        .await
                        .expect("listed")
                }
            };

            // Everything in one page, against the files written.
            let whole = list(usize::MAX, 0).await;
            prop_assert_eq!(whole.next_cursor, None);
            let all: Vec<String> = whole.entries.iter().map(|e| e.path.clone()).collect();
            let mut expected: BTreeSet<String> = BTreeSet::new();
            for file in &files {
                let parts: Vec<&str> = file.split('/').collect();
                let depth = if recursive { parts.len() } else { 1 };
                for n in 1..=depth {
                    expected.insert(format!("/data/{}", parts[..n].join("/")));
                }
            }
            prop_assert_eq!(&all, &expected.into_iter().collect::<Vec<_>>());

            let mut paged: Vec<String> = Vec::new();
            let mut cursor = 0;
            for round in 0.. {
                prop_assert!(round <= all.len(), "paging does not end");
                let limit = limits[round % limits.len()];
                let page = list(limit, cursor).await;
                prop_assert!(page.entries.len() <= limit);
                paged.extend(page.entries.iter().map(|e| e.path.clone()));
                let end = cursor + page.entries.len();
                match page.next_cursor {
                    Some(next) => {
                        prop_assert_eq!(next, end.to_string());
                        prop_assert!(end < all.len());
                        cursor = end;
                    }
                    None => {
                        prop_assert_eq!(end, all.len());
                        break;
                    }
                }
            }
            prop_assert_eq!(&paged, &all);
            let beyond = list(1, all.len() + past).await;
            prop_assert!(beyond.entries.is_empty());
            prop_assert_eq!(beyond.next_cursor, None);
            Ok::<(), TestCaseError>(())
        })?;
    }
}
