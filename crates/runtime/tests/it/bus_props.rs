//! Property test for `EventBus`: each event reaches each listener exactly once, whether
//! dispatched inline or through the pool, even when other listeners panic or fail; reports list
//! one outcome per listener in registration order and `stats()` counts per listener.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use malaka_runtime::{
    DeliveryError, DispatchReport, Event, EventBus, ListenerError, ListenerId, PoolConfig,
    WorkerPool,
};
use proptest::prelude::*;
use uuid::Uuid;

const BOOM: &str = "intentional listener panic";

/// Keeps the expected listener panics out of the test output; other panics print as usual.
fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !msg.starts_with(BOOM) {
                default(info);
            }
        }));
    });
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Records every event id it sees; sometimes sleeps first.
    Counting,
    /// Returns a retryable error (no retry policy, so one attempt).
    Fails,
    /// Returns a permanent error.
    FailsPermanently,
    /// Panics inside the listener's future.
    PanicsAsync,
    /// Panics in the closure, before it returns a future.
    PanicsSync,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        3 => Just(Kind::Counting),
        1 => Just(Kind::Fails),
        1 => Just(Kind::FailsPermanently),
        1 => Just(Kind::PanicsAsync),
        1 => Just(Kind::PanicsSync),
    ]
}

#[derive(Debug)]
struct Payload(u32);

/// Another event type, whose listener must never see `Payload` events.
#[derive(Debug)]
struct Other;

type Seen = Arc<Mutex<HashMap<Uuid, u32>>>;

#[allow(
    clippy::unwrap_used,
    reason = "test helper; clippy.toml only covers #[test] fns"
)]
fn register(bus: &EventBus, i: usize, kind: Kind, seen: &Seen) -> ListenerId {
    let name = format!("l{i}");
    match kind {
        Kind::Counting => {
            let seen = Arc::clone(seen);
            bus.on::<Payload, _, _>(&name, move |e| {
                let seen = Arc::clone(&seen);
                async move {
                    if e.data.0 % 3 == 0 {
                        tokio::time::sleep(Duration::from_micros(u64::from(e.data.0 % 7) * 50))
                            .await;
                    }
                    *seen.lock().unwrap().entry(e.id).or_default() += 1;
                    Ok(())
                }
            })
        }
        Kind::Fails => bus.on::<Payload, _, _>(&name, move |e| async move {
            tokio::task::yield_now().await;
            Err(ListenerError::retryable(format!("fail {i} {}", e.data.0)))
        }),
        Kind::FailsPermanently => bus.on::<Payload, _, _>(&name, move |e| async move {
            Err(ListenerError::permanent(format!("perm {i} {}", e.data.0)))
        }),
        Kind::PanicsAsync => bus.on::<Payload, _, _>(&name, move |e| async move {
            tokio::task::yield_now().await;
            panic!("{BOOM} async {i} {}", e.data.0);
        }),
        Kind::PanicsSync => bus.on::<Payload, _, _>(&name, move |e| {
            if e.data.0 < u32::MAX {
                panic!("{BOOM} sync {i} {}", e.data.0);
            }
            async { Ok(()) }
        }),
    }
}

fn check_report(report: &DispatchReport, id: Uuid, n: u32, kinds: &[Kind]) {
    assert_eq!(report.event_id, id);
    assert_eq!(report.outcomes.len(), kinds.len(), "{report:?}");
    for (i, (outcome, kind)) in report.outcomes.iter().zip(kinds).enumerate() {
        assert_eq!(&*outcome.listener, format!("l{i}"), "registration order");
        assert_eq!(outcome.attempts, 1, "{outcome:?}");
        let expected = match kind {
            Kind::Counting => Ok(()),
            Kind::Fails => Err(DeliveryError::Failed(format!("fail {i} {n}"))),
            Kind::FailsPermanently => Err(DeliveryError::Failed(format!("perm {i} {n}"))),
            Kind::PanicsAsync => Err(DeliveryError::Panicked(format!("{BOOM} async {i} {n}"))),
            Kind::PanicsSync => Err(DeliveryError::Panicked(format!("{BOOM} sync {i} {n}"))),
        };
        assert_eq!(outcome.result, expected, "listener {i}");
    }
    let all_counting = kinds.iter().all(|k| matches!(k, Kind::Counting));
    assert_eq!(report.all_ok(), all_counting);
    assert_eq!(
        report.failures().count(),
        kinds
            .iter()
            .filter(|k| !matches!(k, Kind::Counting))
            .count()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn each_event_reaches_each_listener_exactly_once(
        kinds in prop::collection::vec(kind(), 1..=6),
        // Per event: true = `dispatch_async`, false = `dispatch`.
        modes in prop::collection::vec(any::<bool>(), 1..=12),
        queue in 1usize..=4,
        max_workers in 1usize..=3,
    ) {
        quiet_expected_panics();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let pool = WorkerPool::new(
                PoolConfig::new("bus")
                    .min_workers(1)
                    .max_workers(max_workers)
                    .queue_size(queue),
            )
            .unwrap();
            let bus = EventBus::new(pool.clone());
            let seen: Vec<Seen> = kinds.iter().map(|_| Seen::default()).collect();
            let ids: Vec<ListenerId> = kinds
                .iter()
                .enumerate()
                .map(|(i, k)| register(&bus, i, *k, &seen[i]))
                .collect();
            let other_calls = Arc::new(AtomicU64::new(0));
            let oc = Arc::clone(&other_calls);
            let other_id = bus.on::<Other, _, _>("other", move |_| {
                oc.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            });

            let mut event_ids = Vec::new();
            let mut inline = Vec::new();
            let mut pending = Vec::new();
            for (n, &is_async) in modes.iter().enumerate() {
                let n = u32::try_from(n).unwrap();
                let event = Event::new("payload", Payload(n));
                let id = event.id;
                event_ids.push(id);
                if is_async {
                    pending.push((id, n, bus.dispatch_async(event).await.unwrap()));
                } else {
                    inline.push((id, n, bus.dispatch(event).await));
                }
            }
            for (id, n, report) in &inline {
                check_report(report, *id, *n, &kinds);
            }
            let async_count = pending.len();
            for (id, n, handle) in pending {
                let report = handle.await.expect("the dispatch task itself never fails");
                check_report(&report, id, n, &kinds);
            }

            let m = modes.len() as u64;
            for (i, kind) in kinds.iter().enumerate() {
                let seen = seen[i].lock().unwrap();
                if matches!(kind, Kind::Counting) {
                    assert_eq!(seen.len(), event_ids.len(), "listener {i} missed an event");
                    for id in &event_ids {
                        assert_eq!(seen.get(id), Some(&1), "listener {i}, event {id}");
                    }
                } else {
                    assert!(seen.is_empty());
                }
            }
            assert_eq!(other_calls.load(Ordering::SeqCst), 0, "wrong event type delivered");

            let stats = bus.stats();
            assert_eq!(stats.len(), kinds.len() + 1, "{stats:?}");
            for (i, kind) in kinds.iter().enumerate() {
                let s = &stats[i];
                assert_eq!(s.id, ids[i]);
                assert_eq!(&*s.name, format!("l{i}"));
                assert!(s.topic.contains("Payload"), "{}", s.topic);
                assert_eq!(s.delivered, m, "{s:?}");
                assert_eq!(s.retries, 0, "{s:?}");
                // `failed` counts every failed delivery, panics included; `panicked` only panics.
                let (failed, panicked) = match kind {
                    Kind::Counting => (0, 0),
                    Kind::Fails | Kind::FailsPermanently => (m, 0),
                    Kind::PanicsAsync | Kind::PanicsSync => (m, m),
                };
                assert_eq!((s.failed, s.panicked), (failed, panicked), "{s:?}");
            }
            let other = &stats[kinds.len()];
            assert_eq!((other.id, other.delivered), (other_id, 0));

            // The pool ran one task per `dispatch_async`, none panicked (listener panics are
            // contained), and counted a report with a failure as a failed task.
            let report = pool.shutdown().await;
            assert!(report.clean);
            let pm = pool.metrics();
            assert_eq!(pm.submitted as usize, async_count);
            assert_eq!(pm.completed as usize, async_count);
            assert_eq!(pm.panicked, 0);
            let all_counting = kinds.iter().all(|k| matches!(k, Kind::Counting));
            assert_eq!(pm.failed as usize, if all_counting { 0 } else { async_count });
        });
    }
}
