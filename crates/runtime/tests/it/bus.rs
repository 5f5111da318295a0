//! `EventBus` behaviour: JSON events routed by name, per-listener retry and timeout, permanent
//! errors not retried, `remove`, `Listener` impls, and `dispatch_async` backpressure (a tiny pool
//! queue makes senders wait; no event is dropped).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use malaka_runtime::{
    DeliveryError, Error, Event, EventBus, Jitter, JsonEvent, Listener, ListenerError,
    ListenerOptions, PoolConfig, RetryPolicy, WorkerPool,
};
use serde_json::json;

#[allow(
    clippy::unwrap_used,
    reason = "test helper; clippy.toml only covers #[test] fns"
)]
fn bus() -> EventBus {
    EventBus::new(WorkerPool::new(PoolConfig::new("bus").min_workers(1).max_workers(2)).unwrap())
}

fn policy(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(attempts)
        .initial_delay(Duration::from_millis(10))
        .jitter(Jitter::None)
}

#[tokio::test]
async fn json_events_are_routed_by_name() {
    let bus = bus();
    let created = Arc::new(Mutex::new(Vec::new()));
    let shipped = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&created);
    let created_id = bus.on_named(
        "order.created",
        "audit",
        ListenerOptions::default(),
        move |e: Arc<JsonEvent>| {
            let c = Arc::clone(&c);
            async move {
                let sku = e.data["sku"]
                    .as_str()
                    .ok_or_else(|| ListenerError::permanent("no sku"))?;
                c.lock()
                    .unwrap()
                    .push((sku.to_owned(), e.source.to_string()));
                Ok(())
            }
        },
    );
    let s = Arc::clone(&shipped);
    bus.on_named(
        "order.shipped",
        "notify",
        ListenerOptions::default(),
        move |_| {
            s.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        },
    );
    // A typed listener for `serde_json::Value` is a different registry: named dispatches skip it.
    let typed = Arc::new(AtomicU32::new(0));
    let t = Arc::clone(&typed);
    bus.on::<serde_json::Value, _, _>("typed-json", move |_| {
        t.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });

    let event = Event::new("order.created", json!({"sku": "A-1", "qty": 3})).with_source("sqs");
    let id = event.id;
    let report = bus.dispatch_named(event).await;
    assert_eq!(report.event_id, id);
    assert_eq!(report.outcomes.len(), 1);
    assert_eq!(&*report.outcomes[0].listener, "audit");
    assert!(report.all_ok());
    assert_eq!(
        *created.lock().unwrap(),
        vec![("A-1".to_owned(), "sqs".to_owned())]
    );
    assert_eq!(shipped.load(Ordering::SeqCst), 0);

    // A malformed payload is the listener's permanent failure, reported, not a crash.
    let report = bus
        .dispatch_named(Event::new("order.created", json!({"qty": 1})))
        .await;
    assert_eq!(
        report.outcomes[0].result,
        Err(DeliveryError::Failed("no sku".into()))
    );

    let pending = bus
        .dispatch_named_async(Event::new("order.shipped", json!(null)))
        .await
        .unwrap();
    let report = pending.await.unwrap();
    assert_eq!(report.outcomes.len(), 1);
    assert_eq!(&*report.outcomes[0].listener, "notify");
    assert_eq!(shipped.load(Ordering::SeqCst), 1);

    // No listener for this name: an empty, successful report.
    let report = bus
        .dispatch_named(Event::new("order.cancelled", json!({})))
        .await;
    assert!(report.outcomes.is_empty() && report.all_ok());
    assert_eq!(typed.load(Ordering::SeqCst), 0);

    // A typed dispatch of a JSON value reaches only the typed listener.
    let report = bus
        .dispatch(Event::new("order.created", json!({"sku": "B"})))
        .await;
    assert_eq!(report.outcomes.len(), 1);
    assert_eq!(&*report.outcomes[0].listener, "typed-json");
    assert_eq!(created.lock().unwrap().len(), 1);

    let stats = bus.stats();
    let audit = stats.iter().find(|s| s.id == created_id).unwrap();
    assert_eq!(audit.topic, "order.created");
    assert_eq!((audit.delivered, audit.failed), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn retry_policy_retries_until_success() {
    let bus = bus();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let id = bus.on_with::<u32, _, _>(
        "flaky",
        ListenerOptions::default().retry(policy(5)),
        move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n <= 2 {
                    Err(ListenerError::retryable(format!("try {n} failed")))
                } else {
                    Ok(())
                }
            }
        },
    );
    let t0 = tokio::time::Instant::now();
    let report = bus.dispatch(Event::new("e", 1u32)).await;
    let outcome = &report.outcomes[0];
    assert_eq!(outcome.attempts, 3);
    assert_eq!(outcome.result, Ok(()));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // Backoff of 10 ms then 20 ms.
    assert_eq!(t0.elapsed(), Duration::from_millis(30));
    let s = bus.stats().into_iter().find(|s| s.id == id).unwrap();
    assert_eq!((s.delivered, s.retries, s.failed, s.panicked), (1, 2, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_max_attempts_with_the_last_error() {
    let bus = bus();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    bus.on_with::<u32, _, _>(
        "down",
        ListenerOptions::default().retry(policy(4)),
        move |_| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Err(ListenerError::retryable(format!("try {n}"))) }
        },
    );
    let report = bus.dispatch(Event::new("e", 1u32)).await;
    assert_eq!(report.outcomes[0].attempts, 4);
    assert_eq!(
        report.outcomes[0].result,
        Err(DeliveryError::Failed("try 4".into()))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let s = &bus.stats()[0];
    assert_eq!((s.retries, s.failed), (3, 1));
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_and_panics_are_not_retried() {
    let bus = bus();
    let perm_calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&perm_calls);
    bus.on_with::<u32, _, _>(
        "bad-input",
        ListenerOptions::default().retry(policy(5)),
        move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err(ListenerError::permanent("malformed")) }
        },
    );
    let panic_calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&panic_calls);
    bus.on_with::<u32, _, _>(
        "buggy",
        ListenerOptions::default().retry(policy(5)),
        move |_| {
            c.fetch_add(1, Ordering::SeqCst);
            async {
                if true {
                    panic!("bug");
                }
                Ok(())
            }
        },
    );
    let t0 = tokio::time::Instant::now();
    let report = bus.dispatch(Event::new("e", 7u32)).await;
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "no backoff sleep for a permanent failure"
    );
    assert_eq!(report.outcomes[0].attempts, 1);
    assert_eq!(
        report.outcomes[0].result,
        Err(DeliveryError::Failed("malformed".into()))
    );
    assert_eq!(report.outcomes[1].attempts, 1);
    assert_eq!(
        report.outcomes[1].result,
        Err(DeliveryError::Panicked("bug".into()))
    );
    assert_eq!(perm_calls.load(Ordering::SeqCst), 1);
    assert_eq!(panic_calls.load(Ordering::SeqCst), 1);
    let stats = bus.stats();
    assert_eq!(
        (stats[0].retries, stats[0].failed, stats[0].panicked),
        (0, 1, 0)
    );
    assert_eq!(
        (stats[1].retries, stats[1].failed, stats[1].panicked),
        (0, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_slow_listener_times_out_without_holding_up_the_others() {
    let bus = bus();
    let limit = Duration::from_millis(100);
    bus.on_with::<u32, _, _>(
        "slow",
        ListenerOptions::default().timeout(limit),
        |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        },
    );
    bus.on::<u32, _, _>("fast", |_| async { Ok(()) });
    let t0 = tokio::time::Instant::now();
    let report = bus.dispatch(Event::new("e", 1u32)).await;
    assert_eq!(t0.elapsed(), limit);
    assert_eq!(report.outcomes[0].attempts, 1);
    assert_eq!(
        report.outcomes[0].result,
        Err(DeliveryError::TimedOut(limit))
    );
    assert_eq!(report.outcomes[1].result, Ok(()));
    assert_eq!(bus.stats()[0].failed, 1);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_retryable() {
    let bus = bus();
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let options = ListenerOptions::default()
        .timeout(Duration::from_millis(50))
        .retry(policy(3));
    bus.on_with::<u32, _, _>("sometimes-slow", options, move |_| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(())
        }
    });
    let report = bus.dispatch(Event::new("e", 1u32)).await;
    assert_eq!(report.outcomes[0].attempts, 2);
    assert_eq!(report.outcomes[0].result, Ok(()));
}

struct Audit {
    seen: Arc<AtomicU32>,
}

impl Listener<String> for Audit {
    fn name(&self) -> &str {
        "audit"
    }
    fn options(&self) -> ListenerOptions {
        ListenerOptions::default().retry(policy(2))
    }
    async fn handle(&self, event: Arc<Event<String>>) -> Result<(), ListenerError> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if event.data.is_empty() {
            return Err(ListenerError::permanent("empty"));
        }
        if n == 1 {
            return Err(ListenerError::retryable("first try fails"));
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn listener_impls_use_their_name_and_options() {
    let bus = bus();
    let seen = Arc::new(AtomicU32::new(0));
    bus.subscribe(Audit {
        seen: Arc::clone(&seen),
    });
    let report = bus.dispatch(Event::new("e", "x".to_owned())).await;
    assert_eq!(&*report.outcomes[0].listener, "audit");
    assert_eq!(report.outcomes[0].attempts, 2);
    assert_eq!(report.outcomes[0].result, Ok(()));
    let report = bus.dispatch(Event::new("e", String::new())).await;
    assert_eq!(report.outcomes[0].attempts, 1);
    assert_eq!(seen.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn remove_stops_deliveries() {
    let bus = bus();
    let a = Arc::new(AtomicU32::new(0));
    let b = Arc::new(AtomicU32::new(0));
    let (ac, bc) = (Arc::clone(&a), Arc::clone(&b));
    let a_id = bus.on::<u32, _, _>("a", move |_| {
        ac.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let b_id = bus.on::<u32, _, _>("b", move |_| {
        bc.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });
    let named = Arc::new(AtomicU32::new(0));
    let nc = Arc::clone(&named);
    let named_id = bus.on_named("n", "named", ListenerOptions::default(), move |_| {
        nc.fetch_add(1, Ordering::SeqCst);
        async { Ok(()) }
    });

    assert_eq!(bus.dispatch(Event::new("e", 1u32)).await.outcomes.len(), 2);
    assert!(bus.remove(a_id));
    assert!(!bus.remove(a_id), "second removal finds nothing");
    let report = bus.dispatch(Event::new("e", 2u32)).await;
    assert_eq!(report.outcomes.len(), 1);
    assert_eq!(&*report.outcomes[0].listener, "b");
    bus.dispatch_async(Event::new("e", 3u32))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(a.load(Ordering::SeqCst), 1);
    assert_eq!(b.load(Ordering::SeqCst), 3);

    bus.dispatch_named(Event::new("n", json!(1))).await;
    assert!(bus.remove(named_id));
    let report = bus.dispatch_named(Event::new("n", json!(2))).await;
    assert!(report.outcomes.is_empty());
    assert_eq!(named.load(Ordering::SeqCst), 1);

    let ids: Vec<_> = bus.stats().into_iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![b_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_async_waits_for_room_and_never_drops() {
    const EVENTS: usize = 300;
    let pool = WorkerPool::new(
        PoolConfig::new("tiny")
            .min_workers(1)
            .max_workers(1)
            .queue_size(1),
    )
    .unwrap();
    let bus = EventBus::new(pool.clone());
    let seen = Arc::new(Mutex::new(vec![0u32; EVENTS]));
    let slow = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    bus.on::<usize, _, _>("record", move |e| {
        let s = Arc::clone(&s);
        async move {
            tokio::task::yield_now().await;
            s.lock().unwrap()[e.data] += 1;
            Ok(())
        }
    });
    let sl = Arc::clone(&slow);
    bus.on::<usize, _, _>("slow", move |e| {
        let sl = Arc::clone(&sl);
        async move {
            if e.data % 10 == 0 {
                tokio::time::sleep(Duration::from_micros(20)).await;
            }
            sl.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });

    let mut handles = Vec::new();
    for n in 0..EVENTS {
        handles.push(bus.dispatch_async(Event::new("e", n)).await.unwrap());
        assert!(pool.metrics().queue_length <= 1);
    }
    for h in handles {
        assert!(h.await.unwrap().all_ok());
    }
    assert!(seen.lock().unwrap().iter().all(|&c| c == 1));
    assert_eq!(slow.load(Ordering::SeqCst), EVENTS);

    // Detached dispatches (handles dropped) are still all delivered before a clean shutdown.
    for n in 0..EVENTS {
        drop(bus.dispatch_async(Event::new("e", n)).await.unwrap());
    }
    let report = pool.shutdown().await;
    assert!(report.clean, "{report:?}");
    assert!(seen.lock().unwrap().iter().all(|&c| c == 2));
    assert_eq!(slow.load(Ordering::SeqCst), 2 * EVENTS);
    let m = pool.metrics();
    assert_eq!(m.submitted as usize, 2 * EVENTS);
    assert_eq!(m.completed as usize, 2 * EVENTS);
    assert_eq!(m.rejected, 0);

    // Once the pool is shut down, dispatch_async refuses instead of dropping silently.
    assert!(matches!(
        bus.dispatch_async(Event::new("e", 0usize)).await,
        Err(Error::Closed { .. })
    ));
}
