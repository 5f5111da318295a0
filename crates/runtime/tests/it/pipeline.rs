//! `Pipeline` ordering: items come out in input order through several concurrent stages (whose
//! calls finish out of order), concurrency per stage is used but bounded, output equals the
//! composed map of the input for random inputs, and an error yields an in-order prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use malaka_runtime::{Pipeline, PipelineError};
use proptest::prelude::*;

/// Counts calls in flight and remembers the peak.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(n, Ordering::SeqCst);
    }
    fn exit(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// A delay that makes later items finish before earlier ones within a window.
fn jitter(n: u64) -> Duration {
    Duration::from_millis((n * 7919) % 13)
}

#[tokio::test(start_paused = true)]
async fn items_arrive_in_order_through_three_concurrent_stages() {
    let gauges: Arc<[Gauge; 3]> = Arc::new(Default::default());
    let finish_order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (g1, g2, g3) = (gauges.clone(), gauges.clone(), gauges.clone());
    let fo = finish_order.clone();
    let input: Vec<u64> = (0..200).collect();
    let out = Pipeline::<u64, String>::from_iter(input.clone(), 4)
        .stage("double", 4, 4, move |n| {
            let g = g1.clone();
            let fo = fo.clone();
            async move {
                g[0].enter();
                // Reverse-ish timing: within a batch, later items finish first.
                tokio::time::sleep(Duration::from_millis(10 - n % 4)).await;
                fo.lock().unwrap().push(n);
                g[0].exit();
                Ok(n * 2)
            }
        })
        .stage("label", 3, 2, move |n| {
            let g = g2.clone();
            async move {
                g[1].enter();
                tokio::time::sleep(jitter(n)).await;
                g[1].exit();
                Ok(format!("#{n}"))
            }
        })
        .stage("len", 5, 1, move |s: String| {
            let g = g3.clone();
            async move {
                g[2].enter();
                tokio::time::sleep(jitter(s.len() as u64)).await;
                g[2].exit();
                Ok((s.clone(), s.len()))
            }
        })
        .collect()
        .await
        .unwrap();

    let expected: Vec<(String, usize)> = input
        .iter()
        .map(|n| {
            let s = format!("#{}", n * 2);
            let len = s.len();
            (s, len)
        })
        .collect();
    assert_eq!(out, expected);

    // The first stage really did run calls concurrently and finish them out of order...
    let finished = finish_order.lock().unwrap().clone();
    assert_eq!(finished.len(), input.len());
    assert_ne!(
        finished, input,
        "stage calls should have finished out of order"
    );
    // ...and each stage stayed within its concurrency.
    for (i, (g, limit)) in gauges.iter().zip([4, 3, 5]).enumerate() {
        assert!(g.peak() >= 2, "stage {i} never ran concurrently");
        assert!(
            g.peak() <= limit,
            "stage {i}: {} in flight > {limit}",
            g.peak()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn for_each_counts_what_the_sink_took() {
    let mut seen = Vec::new();
    let n = Pipeline::<u32, ()>::from_iter(0..50u32, 2)
        .stage("sq", 3, 2, |i| async move {
            tokio::time::sleep(jitter(u64::from(i))).await;
            Ok(i * i)
        })
        .for_each(|v| {
            seen.push(v);
            async { Ok(()) }
        })
        .await
        .unwrap();
    assert_eq!(n, 50);
    assert_eq!(seen, (0..50u32).map(|i| i * i).collect::<Vec<_>>());
}

#[allow(
    clippy::unwrap_used,
    reason = "test helper; clippy.toml only covers #[test] fns"
)]
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn output_is_the_map_of_the_input(
        input in prop::collection::vec(any::<i32>(), 0..120),
        c in (1usize..=8, 2usize..=8, 1usize..=8),
        b in (1usize..=8, 1usize..=8, 1usize..=8, 1usize..=8),
        delay_mod in 1u64..=20,
    ) {
        let f1 = |x: i32| i64::from(x) * 3 - 1;
        let f2 = |x: i64| x.rotate_left(7) ^ 0x5555;
        let f3 = |x: i64| format!("{x:x}");
        let expected: Vec<String> = input.iter().map(|&x| f3(f2(f1(x)))).collect();

        let out = paused_runtime().block_on(async move {
            let d = move |x: u64| Duration::from_millis(x % delay_mod);
            Pipeline::<i32, String>::from_iter(input, b.0)
                .stage("one", c.0, b.1, move |x| async move {
                    tokio::time::sleep(d(u64::from(x.unsigned_abs()))).await;
                    Ok(f1(x))
                })
                .stage("two", c.1, b.2, move |x| async move {
                    tokio::time::sleep(d(x.unsigned_abs() / 3)).await;
                    Ok(f2(x))
                })
                .stage("three", c.2, b.3, move |x| async move {
                    tokio::time::sleep(d(x.unsigned_abs() / 5)).await;
                    Ok(f3(x))
                })
                .collect()
                .await
        });
        prop_assert_eq!(out, Ok(expected));
    }

    #[test]
    fn an_error_stops_the_pipeline_after_an_in_order_prefix(
        len in 1usize..100,
        bad_frac in 0.0f64..1.0,
        conc in 1usize..=6,
    ) {
        let bad = ((len as f64 * bad_frac) as usize).min(len - 1);
        let bad_u = u64::try_from(bad).unwrap();
        let (result, seen) = paused_runtime().block_on(async move {
            let mut seen = Vec::new();
            let result = Pipeline::<u64, String>::from_iter(0..u64::try_from(len).unwrap(), 4)
                .stage("first", conc, 2, |n| async move {
                    tokio::time::sleep(jitter(n)).await;
                    Ok(n + 1000)
                })
                .stage("check", conc, 2, move |n| async move {
                    tokio::time::sleep(jitter(n)).await;
                    if n - 1000 == bad_u { Err(format!("bad {}", n - 1000)) } else { Ok(n) }
                })
                .for_each(|n| {
                    seen.push(n);
                    async { Ok(()) }
                })
                .await;
            (result, seen)
        });
        prop_assert_eq!(
            result,
            Err(PipelineError::Stage { stage: "check".into(), error: format!("bad {bad}") })
        );
        // Whatever reached the sink is an in-order prefix of the items before the bad one.
        let expected: Vec<u64> = (0..bad_u).map(|n| n + 1000).collect();
        prop_assert!(seen.len() <= bad);
        prop_assert_eq!(&seen[..], &expected[..seen.len()]);
    }
}
