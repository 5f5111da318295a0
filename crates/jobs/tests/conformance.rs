//! The storage conformance suite: every case runs against both SQLite and PostgreSQL, through the
//! public API (queue, workers, maintenance) and the `Storage` trait directly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

#[macro_use]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use malaka_jobs::{
    CronEntry, Enqueued, Finish, JobContext, JobError, JobId, JobOptions, JobRecord, JobState,
    JobsError, LeaseStatus, ListFilter, Maintenance, MaintenanceConfig, NewJob, Outcome,
    QueueConfig, QueueStats, Registry, Storage, Wakeup, Worker, WorkerConfig,
};
use malaka_runtime::{Jitter, RetryPolicy};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use support::{Backend, Kind, list_all, wait_for, wait_state};

conformance! {
    case_priority_order => sqlite_priority_order, postgres_priority_order;
    case_delayed_job_waits => sqlite_delayed_job_waits, postgres_delayed_job_waits;
    case_unique_key_concurrent => sqlite_unique_key_concurrent, postgres_unique_key_concurrent;
    case_enqueue_in_transaction => sqlite_enqueue_in_transaction, postgres_enqueue_in_transaction;
    case_retries_then_discard => sqlite_retries_then_discard, postgres_retries_then_discard;
    case_cancel_and_retry => sqlite_cancel_and_retry, postgres_cancel_and_retry;
    case_heartbeat_keeps_lease => sqlite_heartbeat_keeps_lease, postgres_heartbeat_keeps_lease;
    case_rescue_and_fencing => sqlite_rescue_and_fencing, postgres_rescue_and_fencing;
    case_shutdown_releases => sqlite_shutdown_releases, postgres_shutdown_releases;
    case_enqueue_many_list_stats => sqlite_enqueue_many_list_stats, postgres_enqueue_many_list_stats;
    case_prune => sqlite_prune, postgres_prune;
    case_cron_exactly_once => sqlite_cron_exactly_once, postgres_cron_exactly_once;
    case_two_workers_drain => sqlite_two_workers_drain, postgres_two_workers_drain;
    case_cancel_stays_in_its_database => sqlite_cancel_stays_in_its_database, postgres_cancel_stays_in_its_database;
    case_idle_worker_takes_new_jobs => sqlite_idle_worker_takes_new_jobs, postgres_idle_worker_takes_new_jobs;
    case_completed_jobs_deleted_unless_kept => sqlite_completed_jobs_deleted_unless_kept, postgres_completed_jobs_deleted_unless_kept;
    case_snooze_spends_no_attempt => sqlite_snooze_spends_no_attempt, postgres_snooze_spends_no_attempt;
    case_wakes_up_after_a_backlog => sqlite_wakes_up_after_a_backlog, postgres_wakes_up_after_a_backlog;
    case_wakes_for_other_processes => sqlite_wakes_for_other_processes, postgres_wakes_for_other_processes;
}

/// The queue the workers in these tests work.
const Q: &str = "q";

type Runs = Arc<Mutex<HashMap<JobId, u32>>>;

fn new_job(kind: &str) -> NewJob {
    NewJob::new(kind, json!({})).queue(Q)
}

/// Short leases and polls so that nothing in the suite waits long.
fn worker_config(concurrency: usize) -> WorkerConfig {
    WorkerConfig::default()
        .queues(vec![QueueConfig::new(Q, concurrency)])
        .lease(Duration::from_secs(3))
        .poll_interval(Duration::from_millis(200))
        .shutdown_timeout(Duration::from_secs(2))
}

async fn start(b: &Backend, registry: Registry, config: WorkerConfig) -> Worker {
    Worker::start(Arc::clone(&b.storage), registry, config)
        .await
        .expect("worker starts")
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn chrono_ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

fn bump(runs: &Runs, id: JobId) -> u32 {
    let mut r = runs.lock().unwrap();
    let n = r.entry(id).or_default();
    *n += 1;
    *n
}

fn count(runs: &Runs, id: JobId) -> u32 {
    runs.lock().unwrap().get(&id).copied().unwrap_or(0)
}

async fn ids_of_kind(b: &Backend, kind: &str) -> Vec<JobId> {
    let mut f = ListFilter::default();
    f.kind = Some(kind.to_owned());
    list_all(b, &f).await
}

// 1. -------------------------------------------------------------------------------------------

/// Lower priority values run first; ties go by run_at, then id. A worker with concurrency 1 runs
/// them in that order and `claim` hands them out in that order.
async fn case_priority_order(b: &Backend) {
    let prios: [i16; 10] = [5, -3, 0, 10, i16::MAX, -3, 2, i16::MIN, 0, 7];
    let t0 = Utc::now() - chrono::Duration::seconds(1);

    let mut expected = Vec::new();
    for p in prios {
        let out = b
            .queue
            .enqueue(new_job("ordered").priority(p).run_at(t0))
            .await
            .unwrap();
        expected.push((p, out.id));
    }
    expected.sort_unstable();
    let expected: Vec<JobId> = expected.into_iter().map(|(_, id)| id).collect();

    let order = Arc::new(Mutex::new(Vec::new()));
    let o = Arc::clone(&order);
    let registry = Registry::new().register_fn(
        "ordered",
        JobOptions::default(),
        move |_, ctx: JobContext| {
            let o = Arc::clone(&o);
            async move {
                o.lock().unwrap().push(ctx.id);
                tokio::time::sleep(ms(5)).await;
                Ok(())
            }
        },
    );
    let worker = start(b, registry, worker_config(1)).await;
    let o = &order;
    wait_for(
        "every ordered job to run",
        Duration::from_secs(10),
        || async move { o.lock().unwrap().len() == prios.len() },
    )
    .await;
    worker.shutdown().await;
    assert_eq!(*order.lock().unwrap(), expected, "run order");
    for id in &expected {
        let j = b.job(*id).await;
        assert_eq!(j.state, JobState::Completed, "{j:?}");
        assert_eq!(j.attempt, 1);
    }
    // Priorities at the ends of the range survive the round trip.
    let extremes = b.job(expected[0]).await;
    assert_eq!(extremes.priority, i16::MIN);
    assert_eq!(b.job(*expected.last().unwrap()).await.priority, i16::MAX);

    // `claim` itself: the most urgent first, and a limit takes the most urgent ones.
    let mut expected = Vec::new();
    for p in prios {
        let out = b
            .queue
            .enqueue(new_job("ordered").queue("claims").priority(p).run_at(t0))
            .await
            .unwrap();
        expected.push((p, out.id));
    }
    expected.sort_unstable();
    let expected: Vec<JobId> = expected.into_iter().map(|(_, id)| id).collect();
    let lease = Duration::from_secs(30);
    let first = b.storage.claim("claims", 3, "probe", lease).await.unwrap();
    let rest = b
        .storage
        .claim("claims", 100, "probe", lease)
        .await
        .unwrap();
    let got: Vec<JobId> = first.iter().chain(&rest).map(|j| j.id).collect();
    assert_eq!(first.len(), 3);
    assert_eq!(got, expected, "claim order");
    for j in first.iter().chain(&rest) {
        assert_eq!(j.state, JobState::Running);
        assert_eq!(j.attempt, 1);
        assert_eq!(j.locked_by.as_deref(), Some("probe"));
        let (at, until) = (j.attempted_at.unwrap(), j.lease_expires_at.unwrap());
        assert!(until >= at + chrono_ms(29_000), "lease {at} .. {until}");
    }
    assert!(
        b.storage
            .claim("claims", 100, "probe", lease)
            .await
            .unwrap()
            .is_empty()
    );
}

// 2. -------------------------------------------------------------------------------------------

/// A delayed job is `scheduled`, not claimable before its time, and a running (idle) worker starts
/// it no earlier than `run_at` and less than a second after.
async fn case_delayed_job_waits(b: &Backend) {
    let started: Arc<Mutex<Option<DateTime<Utc>>>> = Arc::default();
    let s = Arc::clone(&started);
    let registry = Registry::new().register_fn("delayed", JobOptions::default(), move |_, _| {
        let s = Arc::clone(&s);
        async move {
            s.lock().unwrap().get_or_insert(Utc::now());
            Ok(())
        }
    });
    // A long fallback poll: the worker must wake for the job's time, not stumble on it.
    let worker = start(
        b,
        registry,
        worker_config(2).poll_interval(Duration::from_secs(5)),
    )
    .await;
    tokio::time::sleep(ms(300)).await;

    let delay = ms(1500);
    let before = Utc::now();
    let id = b
        .queue
        .enqueue(new_job("delayed").delay(delay))
        .await
        .unwrap()
        .id;
    let after = Utc::now();
    let job = b.job(id).await;
    assert_eq!(job.state, JobState::Scheduled, "{job:?}");
    assert!(
        job.run_at >= before + chrono_ms(1499) && job.run_at <= after + chrono_ms(1500),
        "run_at {} not ~1.5 s after {before}",
        job.run_at
    );
    assert_eq!(b.storage.next_run_at(Q).await.unwrap(), Some(job.run_at));
    let early = b
        .storage
        .claim(Q, 10, "probe", Duration::from_secs(30))
        .await
        .unwrap();
    assert!(early.is_empty(), "claimed before its time: {early:?}");

    // Shortly before its time it still waits.
    let until = (job.run_at - chrono_ms(300) - Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(until).await;
    assert!(started.lock().unwrap().is_none(), "started early");
    assert_eq!(b.job(id).await.state, JobState::Scheduled);

    let st = &started;
    wait_for(
        "the delayed job to start",
        Duration::from_secs(5),
        || async move { st.lock().unwrap().is_some() },
    )
    .await;
    let at = started.lock().unwrap().unwrap();
    assert!(
        at >= job.run_at,
        "started at {at}, before run_at {}",
        job.run_at
    );
    let late = at - job.run_at;
    assert!(late < chrono_ms(1000), "started {late} after run_at");
    let done = wait_state(b, id, JobState::Completed, Duration::from_secs(5)).await;
    assert_eq!(done.attempt, 1);
    worker.shutdown().await;
}

// 3. -------------------------------------------------------------------------------------------

/// Concurrent enqueues with one unique key make one job; the key is held while the job is
/// unfinished (running included) and free again once it completes.
async fn case_unique_key_concurrent(b: &Backend) {
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let queue = b.queue.clone();
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            queue
                .enqueue(new_job("uniq").unique_key("only-one"))
                .await
                .expect("enqueue")
        }));
    }
    let mut results: Vec<Enqueued> = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let id = results[0].id;
    assert!(results.iter().all(|r| r.id == id), "{results:?}");
    assert_eq!(results.iter().filter(|r| !r.duplicate).count(), 1);
    assert_eq!(results.iter().filter(|r| r.duplicate).count(), 19);
    assert_eq!(ids_of_kind(b, "uniq").await, vec![id]);
    let job = b.job(id).await;
    assert_eq!(job.unique_key.as_deref(), Some("only-one"));
    assert_eq!(job.state, JobState::Available);

    // Running still holds the key.
    let claimed = b
        .storage
        .claim(Q, 10, "probe", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    let again = b
        .queue
        .enqueue(new_job("uniq").unique_key("only-one"))
        .await
        .unwrap();
    assert_eq!(
        again,
        Enqueued {
            id,
            duplicate: true
        }
    );

    // A batch skips jobs whose key is held, and a key repeated in the batch is taken once.
    let batch = b
        .queue
        .enqueue_many(vec![
            new_job("uniq").unique_key("only-one"),
            new_job("uniq-other"),
            new_job("uniq").unique_key("fresh"),
            new_job("uniq").unique_key("fresh"),
        ])
        .await
        .unwrap();
    assert_eq!(batch.len(), 2, "{batch:?}");
    assert_eq!(b.job(batch[0]).await.kind, "uniq-other");
    assert_eq!(b.job(batch[1]).await.unique_key.as_deref(), Some("fresh"));
    assert_eq!(ids_of_kind(b, "uniq").await, vec![batch[1], id]);

    // Once it completes, the key can be used again.
    let done = b
        .storage
        .finish(&[Finish {
            id,
            attempt: 1,
            outcome: Outcome::Completed,
        }])
        .await
        .unwrap();
    assert_eq!(done, 1);
    let next = b
        .queue
        .enqueue(new_job("uniq").unique_key("only-one"))
        .await
        .unwrap();
    assert!(!next.duplicate);
    assert_ne!(next.id, id);
    assert_eq!(b.job(next.id).await.state, JobState::Available);
    // A cancelled holder frees it too.
    b.queue.cancel(next.id).await.unwrap();
    let third = b
        .queue
        .enqueue(new_job("uniq").unique_key("only-one"))
        .await
        .unwrap();
    assert!(!third.duplicate);
    assert!(third.id != id && third.id != next.id);
}

// 4. -------------------------------------------------------------------------------------------

/// A job enqueued in the caller's transaction exists only if it commits, and the commit wakes a
/// sleeping worker at once (SQLite commit hooks; PostgreSQL trigger + NOTIFY).
async fn case_enqueue_in_transaction(b: &Backend) {
    let started: Arc<Mutex<Vec<(JobId, Instant)>>> = Arc::default();
    let s = Arc::clone(&started);
    let registry = Registry::new().register_fn("tx-job", JobOptions::default(), move |_, ctx| {
        let s = Arc::clone(&s);
        async move {
            s.lock().unwrap().push((ctx.id, Instant::now()));
            Ok(())
        }
    });
    let poll = Duration::from_secs(10);
    let worker = start(b, registry, worker_config(2).poll_interval(poll)).await;
    // Let the worker find the queue empty and go to sleep on its (long) poll.
    tokio::time::sleep(ms(300)).await;

    let gone = b.enqueue_in_tx(&new_job("tx-job"), false).await;
    assert!(!gone.duplicate);
    assert!(b.storage.get(gone.id).await.unwrap().is_none());
    assert!(ids_of_kind(b, "tx-job").await.is_empty());

    let t0 = Instant::now();
    let kept = b.enqueue_in_tx(&new_job("tx-job"), true).await;
    let st = &started;
    wait_for("the committed job to start", poll, || async move {
        !st.lock().unwrap().is_empty()
    })
    .await;
    let (ran, at) = started.lock().unwrap()[0];
    assert_eq!(ran, kept.id);
    let pickup = at - t0;
    assert!(
        pickup < ms(1500),
        "picked up after {pickup:?}: the commit did not wake the worker (poll is {poll:?})"
    );
    assert_eq!(ids_of_kind(b, "tx-job").await, vec![kept.id]);
    wait_state(b, kept.id, JobState::Completed, Duration::from_secs(5)).await;
    tokio::time::sleep(ms(200)).await;
    assert_eq!(
        started.lock().unwrap().len(),
        1,
        "only the committed job ran"
    );
    worker.shutdown().await;
}

// 5. -------------------------------------------------------------------------------------------

/// Retryable failures retry with backoff until `max_attempts`, then discard with every attempt's
/// error; a permanent failure discards at once; an unknown kind is discarded naming the kind; a
/// failed attempt waits its backoff and its error stays in the history after a success.
async fn case_retries_then_discard(b: &Backend) {
    let runs: Runs = Arc::default();
    let fast = JobOptions::default().max_attempts(3).backoff(
        RetryPolicy::new(u32::MAX)
            .initial_delay(ms(10))
            .max_delay(ms(50)),
    );
    let slow_retry = JobOptions::default().backoff(
        RetryPolicy::new(u32::MAX)
            .initial_delay(ms(700))
            .max_delay(ms(700))
            .jitter(Jitter::None),
    );
    let (r1, r2, r3) = (Arc::clone(&runs), Arc::clone(&runs), Arc::clone(&runs));
    let registry = Registry::new()
        .register_fn("always-fails", fast.clone(), move |_, ctx: JobContext| {
            let r = Arc::clone(&r1);
            async move {
                bump(&r, ctx.id);
                Err(JobError::retryable(format!(
                    "boom on attempt {}",
                    ctx.attempt
                )))
            }
        })
        .register_fn("permanent", fast, move |_, ctx: JobContext| {
            let r = Arc::clone(&r2);
            async move {
                bump(&r, ctx.id);
                Err(JobError::permanent("bad input: no sku"))
            }
        })
        .register_fn("flaky", slow_retry, move |_, ctx: JobContext| {
            let r = Arc::clone(&r3);
            async move {
                bump(&r, ctx.id);
                if ctx.attempt == 1 {
                    Err(JobError::retryable("flaky first"))
                } else {
                    Ok(())
                }
            }
        });
    let worker = start(b, registry, worker_config(4).poll_interval(ms(100))).await;

    let always = b
        .queue
        .enqueue(new_job("always-fails").max_attempts(3))
        .await
        .unwrap()
        .id;
    let permanent = b
        .queue
        .enqueue(new_job("permanent").max_attempts(3))
        .await
        .unwrap()
        .id;
    let unknown = b
        .queue
        .enqueue(new_job("nobody.handles.this").max_attempts(3))
        .await
        .unwrap()
        .id;
    let flaky = b
        .queue
        .enqueue(new_job("flaky").max_attempts(3))
        .await
        .unwrap()
        .id;

    let j = wait_state(b, always, JobState::Discarded, Duration::from_secs(10)).await;
    assert_eq!(j.attempt, 3);
    assert_eq!(count(&runs, always), 3);
    assert_eq!(
        j.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (n, e) in j.errors.iter().enumerate() {
        assert_eq!(e.error, format!("boom on attempt {}", n + 1));
    }
    assert!(j.errors.windows(2).all(|w| w[0].at <= w[1].at));
    assert!(j.finished_at.is_some());
    assert!(j.lease_expires_at.is_none());

    let j = wait_state(b, permanent, JobState::Discarded, Duration::from_secs(5)).await;
    assert_eq!(j.attempt, 1);
    assert_eq!(count(&runs, permanent), 1);
    assert_eq!(j.errors.len(), 1);
    assert_eq!(j.errors[0].attempt, 1);
    assert_eq!(j.errors[0].error, "bad input: no sku");
    assert!(j.finished_at.is_some());

    let j = wait_state(b, unknown, JobState::Discarded, Duration::from_secs(5)).await;
    assert_eq!(j.attempt, 1);
    assert_eq!(j.errors.len(), 1);
    assert!(
        j.errors[0].error.contains("nobody.handles.this"),
        "{:?}",
        j.errors
    );
    assert!(j.finished_at.is_some());

    // The flaky job waits its 700 ms backoff as `retryable`, then succeeds on attempt 2.
    let mut retrying = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    while retrying.is_none() {
        let j = b.job(flaky).await;
        if !j.errors.is_empty() {
            retrying = Some(j);
        } else {
            assert!(Instant::now() < deadline, "flaky never failed: {j:?}");
            tokio::time::sleep(ms(10)).await;
        }
    }
    let j = retrying.unwrap();
    assert_eq!(j.state, JobState::Retryable, "{j:?}");
    assert!(j.finished_at.is_none());
    assert!(
        j.run_at >= j.attempted_at.unwrap() + chrono_ms(699),
        "retry at {} too soon after {:?}",
        j.run_at,
        j.attempted_at
    );
    let j = wait_state(b, flaky, JobState::Completed, Duration::from_secs(5)).await;
    assert_eq!(j.attempt, 2);
    assert_eq!(count(&runs, flaky), 2);
    assert_eq!(j.errors.len(), 1);
    assert_eq!(
        (j.errors[0].attempt, j.errors[0].error.as_str()),
        (1, "flaky first")
    );
    worker.shutdown().await;
}

// 6. -------------------------------------------------------------------------------------------

/// Which way a job that sees its cancellation ends its run.
#[derive(Clone, Copy)]
enum OnCancel {
    ReturnOk,
    ReturnErr,
}

fn waits_for_cancel(
    runs: &Runs,
    saw: &Arc<Mutex<HashMap<JobId, Instant>>>,
    how: OnCancel,
) -> impl Fn(serde_json::Value, JobContext) -> futures::future::BoxFuture<'static, Result<(), JobError>>
+ Send
+ Sync
+ 'static {
    let (runs, saw) = (Arc::clone(runs), Arc::clone(saw));
    move |_, ctx: JobContext| {
        let (runs, saw) = (Arc::clone(&runs), Arc::clone(&saw));
        Box::pin(async move {
            if bump(&runs, ctx.id) > 1 {
                return Ok(()); // a retried run just completes
            }
            tokio::select! {
                () = ctx.cancelled() => {
                    saw.lock().unwrap().insert(ctx.id, Instant::now());
                    match how {
                        OnCancel::ReturnOk => Ok(()),
                        OnCancel::ReturnErr => Err(JobError::retryable("stopped: cancelled")),
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(60)) => Ok(()),
            }
        })
    }
}

/// Cancelling a running job reaches it at once (well under the heartbeat) and it ends
/// `cancelled` however its run returns; an available job is cancelled on the spot; a completed
/// one cannot be; `retry` runs cancelled and discarded jobs again.
async fn case_cancel_and_retry(b: &Backend) {
    let runs: Runs = Arc::default();
    let saw: Arc<Mutex<HashMap<JobId, Instant>>> = Arc::default();
    let r = Arc::clone(&runs);
    let registry = Registry::new()
        .register_fn(
            "waits-ok",
            JobOptions::default(),
            waits_for_cancel(&runs, &saw, OnCancel::ReturnOk),
        )
        .register_fn(
            "waits-err",
            JobOptions::default(),
            waits_for_cancel(&runs, &saw, OnCancel::ReturnErr),
        )
        .register_fn("quick", JobOptions::default(), |_, _| async { Ok(()) })
        .register_fn(
            "fails-first",
            JobOptions::default(),
            move |_, ctx: JobContext| {
                let r = Arc::clone(&r);
                async move {
                    if bump(&r, ctx.id) == 1 {
                        Err(JobError::permanent("refused"))
                    } else {
                        Ok(())
                    }
                }
            },
        );
    // Heartbeat every 5 s: a cancel seen within 2 s came by wake-up, not by heartbeat.
    let config = worker_config(4)
        .lease(Duration::from_secs(15))
        .poll_interval(ms(100));
    let worker = start(b, registry, config).await;

    let mut cancelled = Vec::new();
    for kind in ["waits-ok", "waits-err"] {
        let id = b.queue.enqueue(new_job(kind)).await.unwrap().id;
        let rr = &runs;
        wait_for("the job to start", Duration::from_secs(5), || async move {
            count(rr, id) == 1
        })
        .await;
        let t0 = Instant::now();
        let j = b.queue.cancel(id).await.unwrap();
        // The record is read after the cancel commits: the worker may have stopped it already.
        assert!(
            matches!(j.state, JobState::Running | JobState::Cancelled),
            "{j:?}"
        );
        assert!(j.cancel_requested);
        let s = &saw;
        wait_for(
            "the running job to see its cancel",
            Duration::from_secs(2),
            || async move { s.lock().unwrap().contains_key(&id) },
        )
        .await;
        let seen = saw.lock().unwrap()[&id] - t0;
        assert!(seen < Duration::from_secs(2), "cancel seen after {seen:?}");
        let j = wait_state(b, id, JobState::Cancelled, Duration::from_secs(3)).await;
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert_eq!(j.attempt, 1);
        assert!(j.finished_at.is_some());
        match kind {
            "waits-ok" => assert!(j.errors.is_empty(), "{:?}", j.errors),
            _ => {
                assert_eq!(j.errors.len(), 1);
                assert_eq!(
                    (j.errors[0].attempt, j.errors[0].error.as_str()),
                    (1, "stopped: cancelled")
                );
            }
        }
        // Cancelling a cancelled job is a no-op.
        assert_eq!(b.queue.cancel(id).await.unwrap().state, JobState::Cancelled);
        cancelled.push(id);
    }

    // An available job (no worker on its queue) is cancelled at once.
    let idle = b
        .queue
        .enqueue(new_job("quick").queue("idle"))
        .await
        .unwrap()
        .id;
    let j = b.queue.cancel(idle).await.unwrap();
    assert_eq!(j.state, JobState::Cancelled);
    assert_eq!(j.attempt, 0);
    assert!(j.finished_at.is_some());
    assert!(
        b.storage
            .claim("idle", 10, "probe", Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    // ...and `retry` makes it available again with its attempts reset.
    let j = b.queue.retry(idle).await.unwrap();
    assert_eq!(j.state, JobState::Available);
    assert_eq!(j.attempt, 0);
    assert!(j.finished_at.is_none());
    assert!(!j.cancel_requested);

    // A completed job cannot be cancelled (nor retried).
    let done = b.queue.enqueue(new_job("quick")).await.unwrap().id;
    wait_state(b, done, JobState::Completed, Duration::from_secs(5)).await;
    let err = b.queue.cancel(done).await.unwrap_err();
    assert!(
        matches!(
            err,
            JobsError::WrongState {
                state: JobState::Completed,
                ..
            }
        ),
        "{err:?}"
    );
    let err = b.queue.retry(done).await.unwrap_err();
    assert!(matches!(err, JobsError::WrongState { .. }), "{err:?}");
    assert_eq!(b.job(done).await.state, JobState::Completed);
    let missing = b.queue.cancel(9_999_999).await.unwrap_err();
    assert!(
        matches!(missing, JobsError::NotFound(9_999_999)),
        "{missing:?}"
    );

    // Retrying the cancelled jobs runs them again, to completion.
    for id in cancelled {
        let j = b.queue.retry(id).await.unwrap();
        assert!(!j.cancel_requested);
        let j = wait_state(b, id, JobState::Completed, Duration::from_secs(5)).await;
        assert_eq!(count(&runs, id), 2);
        assert_eq!(j.attempt, 1, "attempts start over after a retry");
    }

    // A discarded job too, keeping its earlier error.
    let id = b.queue.enqueue(new_job("fails-first")).await.unwrap().id;
    let j = wait_state(b, id, JobState::Discarded, Duration::from_secs(5)).await;
    assert_eq!(j.errors.len(), 1);
    let j = b.queue.retry(id).await.unwrap();
    assert!(j.finished_at.is_none() || j.state == JobState::Completed);
    let j = wait_state(b, id, JobState::Completed, Duration::from_secs(5)).await;
    assert_eq!(count(&runs, id), 2);
    assert_eq!(j.attempt, 1);
    assert_eq!(j.errors.len(), 1);
    assert_eq!(j.errors[0].error, "refused");
    worker.shutdown().await;
}

// 7. -------------------------------------------------------------------------------------------

/// A job that runs longer than its lease keeps it by heartbeat while the rescuer runs every
/// 100 ms: it runs once, on attempt 1, and completes without errors.
async fn case_heartbeat_keeps_lease(b: &Backend) {
    let runs: Runs = Arc::default();
    let r = Arc::clone(&runs);
    let registry = Registry::new().register_fn("long", JobOptions::default(), move |_, ctx| {
        let r = Arc::clone(&r);
        async move {
            bump(&r, ctx.id);
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(())
        }
    });
    let mut mc = MaintenanceConfig::default();
    mc.rescue_every = ms(100);
    let maintenance = Maintenance::start(Arc::clone(&b.storage), mc, Vec::new());
    let worker = start(
        b,
        registry,
        worker_config(1).lease(ms(600)).poll_interval(ms(100)),
    )
    .await;

    let id = b.queue.enqueue(new_job("long")).await.unwrap().id;
    let rr = &runs;
    wait_for(
        "the long job to start",
        Duration::from_secs(5),
        || async move { count(rr, id) == 1 },
    )
    .await;
    tokio::time::sleep(ms(1200)).await;
    let j = b.job(id).await;
    assert_eq!(j.state, JobState::Running, "{j:?}");
    assert_eq!(j.attempt, 1);
    let (at, until) = (j.attempted_at.unwrap(), j.lease_expires_at.unwrap());
    assert!(
        until > at + chrono_ms(900),
        "lease not renewed: attempted {at}, expires {until}"
    );

    let j = wait_state(b, id, JobState::Completed, Duration::from_secs(5)).await;
    assert_eq!(count(&runs, id), 1, "ran more than once");
    assert_eq!(j.attempt, 1);
    assert!(j.errors.is_empty(), "{:?}", j.errors);
    maintenance.stop().await;
    worker.shutdown().await;
}

// 8. -------------------------------------------------------------------------------------------

/// An expired lease is rescued (retryable, or discarded when out of attempts) with an error naming
/// the lease; updates from the rescued attempt are fenced out, the new attempt's go through.
async fn case_rescue_and_fencing(b: &Backend) {
    let lease = ms(200);
    let id = b
        .queue
        .enqueue(new_job("fenced").max_attempts(5))
        .await
        .unwrap()
        .id;
    let last = b
        .queue
        .enqueue(new_job("fenced").max_attempts(1))
        .await
        .unwrap()
        .id;
    let claimed = b.storage.claim(Q, 2, "dead-worker", lease).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|j| j.attempt == 1));
    assert_eq!(
        b.storage.rescue_expired().await.unwrap(),
        0,
        "not yet expired"
    );

    tokio::time::sleep(ms(350)).await;
    assert_eq!(b.storage.rescue_expired().await.unwrap(), 2);
    assert_eq!(b.storage.rescue_expired().await.unwrap(), 0, "rescued once");
    let j = b.job(id).await;
    assert_eq!(j.state, JobState::Retryable, "{j:?}");
    assert_eq!(j.attempt, 1);
    assert!(j.lease_expires_at.is_none());
    assert!(j.locked_by.is_none());
    assert!(j.finished_at.is_none());
    assert_eq!(j.errors.len(), 1);
    assert_eq!(j.errors[0].attempt, 1);
    assert!(j.errors[0].error.contains("lease"), "{:?}", j.errors);
    assert!(j.errors[0].error.contains("dead-worker"), "{:?}", j.errors);
    assert!((Utc::now() - j.errors[0].at).abs() < chrono::Duration::seconds(5));
    let out = b.job(last).await;
    assert_eq!(out.state, JobState::Discarded, "{out:?}");
    assert!(out.finished_at.is_some());
    assert_eq!(out.errors.len(), 1);
    assert!(out.errors[0].error.contains("lease"));

    // A second claim starts attempt 2 (the discarded job stays put).
    let again = b
        .storage
        .claim(Q, 10, "live-worker", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    assert_eq!(again[0].attempt, 2);
    assert_eq!(again[0].locked_by.as_deref(), Some("live-worker"));

    // The dead worker's late reports for attempt 1 change nothing.
    let late = b
        .storage
        .finish(&[Finish {
            id,
            attempt: 1,
            outcome: Outcome::Completed,
        }])
        .await
        .unwrap();
    assert_eq!(late, 0);
    let late = b
        .storage
        .finish(&[Finish {
            id,
            attempt: 1,
            outcome: Outcome::Discard {
                error: "late".into(),
            },
        }])
        .await
        .unwrap();
    assert_eq!(late, 0);
    assert!(
        b.storage
            .heartbeat(&[(id, 1)], Duration::from_secs(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.storage.release(&[(id, 1, true)]).await.unwrap(), 0);
    let j = b.job(id).await;
    assert_eq!(j.state, JobState::Running);
    assert_eq!(j.attempt, 2);
    assert_eq!(j.errors.len(), 1);

    // The live attempt's heartbeat and finish go through.
    assert_eq!(
        b.storage
            .heartbeat(&[(id, 2)], Duration::from_secs(30))
            .await
            .unwrap(),
        vec![LeaseStatus {
            id,
            cancel_requested: false
        }]
    );
    let done = b
        .storage
        .finish(&[Finish {
            id,
            attempt: 2,
            outcome: Outcome::Completed,
        }])
        .await
        .unwrap();
    assert_eq!(done, 1);
    let j = b.job(id).await;
    assert_eq!(j.state, JobState::Completed);
    assert!(j.finished_at.is_some());
    assert_eq!(j.errors.len(), 1);
    // A repeated report changes nothing either.
    let again = b
        .storage
        .finish(&[Finish {
            id,
            attempt: 2,
            outcome: Outcome::Completed,
        }])
        .await
        .unwrap();
    assert_eq!(again, 0);
}

// 9. -------------------------------------------------------------------------------------------

/// Shutdown past its drain time gives every held job back at once: the running one keeps its
/// attempt, the claimed-but-unstarted ones get theirs back; a second worker then completes them,
/// and no job that never started in the first worker runs twice.
async fn case_shutdown_releases(b: &Backend) {
    let first_runs: Arc<Mutex<Vec<JobId>>> = Arc::default();
    let f = Arc::clone(&first_runs);
    let slow = Registry::new().register_fn("slow", JobOptions::default(), move |_, ctx| {
        let f = Arc::clone(&f);
        async move {
            f.lock().unwrap().push(ctx.id);
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        }
    });
    let ids = b
        .queue
        .enqueue_many((0..5).map(|_| new_job("slow")).collect())
        .await
        .unwrap();
    let w1 = start(b, slow, worker_config(1).id("worker-one")).await;
    let fr = &first_runs;
    wait_for(
        "a slow job to start",
        Duration::from_secs(5),
        || async move { !fr.lock().unwrap().is_empty() },
    )
    .await;
    let ids_ref = &ids;
    wait_for(
        "every job to be claimed",
        Duration::from_secs(5),
        || async move {
            let mut running = 0;
            for id in ids_ref {
                let j = b.job(*id).await;
                if j.state == JobState::Running && j.locked_by.as_deref() == Some("worker-one") {
                    running += 1;
                }
            }
            running == ids_ref.len()
        },
    )
    .await;
    tokio::time::sleep(ms(100)).await;

    let t0 = Instant::now();
    let report = w1.shutdown_within(Some(ms(300))).await;
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        t0.elapsed()
    );
    assert_eq!(report.released, 5);
    let started = first_runs.lock().unwrap().clone();
    assert_eq!(started.len(), 1, "concurrency 1: {started:?}");
    let started = started[0];
    for id in &ids {
        let j = b.job(*id).await;
        assert_eq!(j.state, JobState::Available, "{j:?}");
        assert!(
            j.locked_by.is_none() && j.lease_expires_at.is_none(),
            "{j:?}"
        );
        let want = if *id == started { 1 } else { 0 };
        assert_eq!(j.attempt, want, "{j:?}");
    }

    let second_runs: Runs = Arc::default();
    let r = Arc::clone(&second_runs);
    let fast = Registry::new().register_fn("slow", JobOptions::default(), move |_, ctx| {
        let r = Arc::clone(&r);
        async move {
            bump(&r, ctx.id);
            Ok(())
        }
    });
    let w2 = start(b, fast, worker_config(2).id("worker-two")).await;
    for id in &ids {
        let j = wait_state(b, *id, JobState::Completed, Duration::from_secs(5)).await;
        let first = u32::from(*id == started);
        let total = first + count(&second_runs, *id);
        if *id == started {
            assert_eq!(total, 2, "the interrupted job runs again");
            assert_eq!(j.attempt, 2);
        } else {
            assert_eq!(total, 1, "job {id} ran {total} times");
            assert_eq!(j.attempt, 1);
        }
    }
    w2.shutdown().await;
}

// 10. ------------------------------------------------------------------------------------------

fn batch_job(i: usize) -> NewJob {
    let mut j = NewJob::new(format!("k{}", i % 3), json!({ "i": i }))
        .queue(if i % 4 == 0 { "b" } else { "a" })
        .priority(i16::try_from(i % 7).unwrap())
        .tag(format!("t{}", i % 5))
        .tag("all");
    if i % 10 == 0 {
        j = j.delay(Duration::from_secs(3600));
    }
    j
}

/// `enqueue_many` returns ids in input order; `stats` counts per queue and state and ages the
/// oldest available job; `list` filters and pages (newest first) over every job exactly once.
async fn case_enqueue_many_list_stats(b: &Backend) {
    let n = 1000;
    let ids = b
        .queue
        .enqueue_many((0..n).map(batch_job).collect())
        .await
        .unwrap();
    assert_eq!(ids.len(), n);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids not ascending");

    // Every stored job matches the input at its position.
    let mut all = ListFilter::default();
    all.limit = Some(1000);
    let records: HashMap<JobId, JobRecord> = b
        .queue
        .list(&all)
        .await
        .unwrap()
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    assert_eq!(records.len(), n);
    for (i, id) in ids.iter().enumerate() {
        let j = &records[id];
        let want = batch_job(i);
        assert_eq!(j.payload, json!({ "i": i }), "job {id} is input {i}");
        assert_eq!(
            (&j.queue, &j.kind, &j.tags),
            (&want.queue, &want.kind, &want.tags)
        );
        assert_eq!(j.priority, want.priority);
        let state = if i % 10 == 0 {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        assert_eq!(j.state, state);
        assert_eq!(j.attempt, 0);
        assert_eq!(j.max_attempts, malaka_jobs::DEFAULT_MAX_ATTEMPTS);
    }

    tokio::time::sleep(ms(100)).await;
    let stats = b.queue.stats().await.unwrap();
    let mut want: BTreeMap<&str, BTreeMap<JobState, i64>> = BTreeMap::new();
    for i in 0..n {
        let j = batch_job(i);
        let state = if j.run_at.is_some() {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        let q = if i % 4 == 0 { "b" } else { "a" };
        *want.entry(q).or_default().entry(state).or_default() += 1;
    }
    assert_eq!(
        stats.iter().map(|s| s.queue.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    for s in &stats {
        let queue = &s.queue;
        assert_eq!(s.counts, want[queue.as_str()], "queue {queue}");
        let age = s.oldest_available_age.expect("an oldest available age");
        assert!(
            age >= ms(100) && age < Duration::from_secs(60),
            "queue {queue}: oldest available age {age:?}"
        );
    }

    // Pages of 137, newest first, cover every job once.
    let mut f = ListFilter::default();
    f.limit = Some(137);
    let paged = list_all(b, &f).await;
    let newest_first: Vec<JobId> = ids.iter().rev().copied().collect();
    assert_eq!(paged, newest_first);

    let expect = |keep: &dyn Fn(usize) -> bool| -> Vec<JobId> {
        (0..n).rev().filter(|i| keep(*i)).map(|i| ids[i]).collect()
    };
    let mut f = ListFilter::default();
    f.limit = Some(137);
    f.queue = Some("a".into());
    assert_eq!(list_all(b, &f).await, expect(&|i| i % 4 != 0), "queue");
    let mut f = ListFilter::default();
    f.limit = Some(137);
    f.kind = Some("k1".into());
    assert_eq!(list_all(b, &f).await, expect(&|i| i % 3 == 1), "kind");
    let mut f = ListFilter::default();
    f.limit = Some(137);
    f.states = vec![JobState::Scheduled];
    assert_eq!(list_all(b, &f).await, expect(&|i| i % 10 == 0), "state");
    f.states = vec![JobState::Scheduled, JobState::Available];
    assert_eq!(list_all(b, &f).await, newest_first, "states");
    f.states = vec![JobState::Completed];
    assert!(list_all(b, &f).await.is_empty());
    let mut f = ListFilter::default();
    f.limit = Some(137);
    f.tag = Some("t3".into());
    assert_eq!(list_all(b, &f).await, expect(&|i| i % 5 == 3), "tag");
    f.tag = Some("t".into());
    assert!(list_all(b, &f).await.is_empty(), "tags match whole");
    let mut f = ListFilter::default();
    f.limit = Some(7);
    f.queue = Some("b".into());
    f.kind = Some("k2".into());
    f.tag = Some("t0".into());
    f.states = vec![JobState::Available];
    assert_eq!(
        list_all(b, &f).await,
        expect(&|i| i % 4 == 0 && i % 3 == 2 && i % 5 == 0 && i % 10 != 0),
        "combined"
    );

    // Page sizes: 50 by default, at most 1000.
    assert_eq!(
        b.queue.list(&ListFilter::default()).await.unwrap().len(),
        50
    );
    let mut f = ListFilter::default();
    f.limit = Some(5000);
    f.before_id = Some(ids[900]);
    let page = b.queue.list(&f).await.unwrap();
    assert_eq!(
        page.iter().map(|j| j.id).collect::<Vec<_>>(),
        newest_first[100..].to_vec()
    );
}

// 11. ------------------------------------------------------------------------------------------

/// Runs a job of queue `p` to `outcome` through claim and finish; returns its id.
async fn run_to(b: &Backend, outcome: Outcome) -> JobId {
    let id = b
        .queue
        .enqueue(new_job("prunable").queue("p"))
        .await
        .unwrap()
        .id;
    let claimed = b
        .storage
        .claim("p", 1, "probe", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, id);
    let n = b
        .storage
        .finish(&[Finish {
            id,
            attempt: 1,
            outcome,
        }])
        .await
        .unwrap();
    assert_eq!(n, 1);
    id
}

/// `prune` deletes final jobs that finished before their cut-off, at most `limit` at a time, and
/// never unfinished ones.
async fn case_prune(b: &Backend) {
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(run_to(b, Outcome::Completed).await);
    }
    let old_failed = run_to(
        b,
        Outcome::Discard {
            error: "nope".into(),
        },
    )
    .await;
    tokio::time::sleep(ms(50)).await;
    let cutoff = Utc::now();
    tokio::time::sleep(ms(50)).await;
    let new = [
        run_to(b, Outcome::Completed).await,
        run_to(b, Outcome::Completed).await,
    ];
    let waiting = b
        .queue
        .enqueue(new_job("prunable").queue("p"))
        .await
        .unwrap()
        .id;
    let running = b
        .queue
        .enqueue(new_job("prunable").queue("p"))
        .await
        .unwrap()
        .id;
    assert_eq!(
        b.storage
            .claim("p", 1, "probe", Duration::from_secs(30))
            .await
            .unwrap()[0]
            .id,
        waiting
    );
    let scheduled = b
        .queue
        .enqueue(
            new_job("prunable")
                .queue("p")
                .delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap()
        .id;

    let long_ago = cutoff - chrono::Duration::days(1);
    assert_eq!(b.storage.prune(cutoff, long_ago, 1000).await.unwrap(), 3);
    for id in &old {
        assert!(b.storage.get(*id).await.unwrap().is_none(), "{id} pruned");
    }
    for id in new
        .iter()
        .chain([&old_failed, &waiting, &running, &scheduled])
    {
        assert!(b.storage.get(*id).await.unwrap().is_some(), "{id} kept");
    }
    // Failed jobs have their own cut-off.
    assert_eq!(b.storage.prune(cutoff, cutoff, 1000).await.unwrap(), 1);
    assert!(b.storage.get(old_failed).await.unwrap().is_none());
    // `limit` bounds one call; unfinished jobs are never pruned.
    let later = Utc::now() + chrono::Duration::hours(1);
    assert_eq!(b.storage.prune(later, later, 1).await.unwrap(), 1);
    assert_eq!(b.storage.prune(later, later, 1).await.unwrap(), 1);
    assert_eq!(b.storage.prune(later, later, 1000).await.unwrap(), 0);
    let mut left = ids_of_kind(b, "prunable").await;
    left.sort_unstable();
    assert_eq!(left, vec![waiting, running, scheduled]);
}

// 12. ------------------------------------------------------------------------------------------

type CronLog = Arc<Mutex<Vec<(&'static str, DateTime<Utc>, bool)>>>;

/// A storage that records every `cron_tick` call and its result, and passes everything on.
struct Spy {
    node: &'static str,
    inner: Arc<dyn Storage>,
    log: CronLog,
}

#[async_trait]
impl Storage for Spy {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn enqueue(&self, job: NewJob) -> Result<Enqueued, JobsError> {
        self.inner.enqueue(job).await
    }
    async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<JobId>, JobsError> {
        self.inner.enqueue_many(jobs).await
    }
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, JobsError> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, JobsError> {
        self.inner.list(filter).await
    }
    async fn stats(&self) -> Result<Vec<QueueStats>, JobsError> {
        self.inner.stats().await
    }
    async fn cancel(&self, id: JobId) -> Result<JobRecord, JobsError> {
        self.inner.cancel(id).await
    }
    async fn retry(&self, id: JobId) -> Result<JobRecord, JobsError> {
        self.inner.retry(id).await
    }
    async fn claim(
        &self,
        queue: &str,
        limit: usize,
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<JobRecord>, JobsError> {
        self.inner.claim(queue, limit, worker, lease).await
    }
    async fn finish(&self, batch: &[Finish]) -> Result<u64, JobsError> {
        self.inner.finish(batch).await
    }
    async fn heartbeat(
        &self,
        jobs: &[(JobId, i32)],
        lease: Duration,
    ) -> Result<Vec<LeaseStatus>, JobsError> {
        self.inner.heartbeat(jobs, lease).await
    }
    async fn release(&self, jobs: &[(JobId, i32, bool)]) -> Result<u64, JobsError> {
        self.inner.release(jobs).await
    }
    async fn next_run_at(&self, queue: &str) -> Result<Option<DateTime<Utc>>, JobsError> {
        self.inner.next_run_at(queue).await
    }
    async fn rescue_expired(&self) -> Result<u64, JobsError> {
        self.inner.rescue_expired().await
    }
    async fn prune(
        &self,
        completed_before: DateTime<Utc>,
        failed_before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, JobsError> {
        self.inner
            .prune(completed_before, failed_before, limit)
            .await
    }
    async fn promote_due(&self) -> Result<u64, JobsError> {
        self.inner.promote_due().await
    }
    async fn cron_tick(
        &self,
        name: &str,
        tick: DateTime<Utc>,
        job: NewJob,
    ) -> Result<bool, JobsError> {
        let won = self.inner.cron_tick(name, tick, job).await?;
        self.log.lock().unwrap().push((self.node, tick, won));
        Ok(won)
    }
    async fn subscribe(&self) -> Result<mpsc::Receiver<Wakeup>, JobsError> {
        self.inner.subscribe().await
    }
}

/// Two maintenance "nodes" with the same every-second cron entry enqueue each tick exactly once;
/// `cron_tick` for a tick already taken (or an older one) returns false.
async fn case_cron_exactly_once(b: &Backend) {
    let job = NewJob::new("cron-job", json!({ "from": "cron" })).queue("cron");
    let entry = CronEntry::new("every-second", "*/1 * * * * *", job).unwrap();
    let t = DateTime::parse_from_rfc3339("2030-01-01T12:00:00.5Z")
        .unwrap()
        .to_utc();
    assert_eq!(entry.next_after(t), Some(t + chrono_ms(500)));

    let log: CronLog = Arc::default();
    let node_one = Arc::new(Spy {
        node: "one",
        inner: Arc::clone(&b.storage),
        log: Arc::clone(&log),
    });
    let node_two = Arc::new(Spy {
        node: "two",
        inner: b.another_storage().await,
        log: Arc::clone(&log),
    });
    let m1 = Maintenance::start(node_one, MaintenanceConfig::default(), vec![entry.clone()]);
    let m2 = Maintenance::start(node_two, MaintenanceConfig::default(), vec![entry]);
    tokio::time::sleep(ms(3300)).await;
    m1.stop().await;
    m2.stop().await;

    let log = log.lock().unwrap().clone();
    let mut ticks: BTreeMap<DateTime<Utc>, Vec<(&str, bool)>> = BTreeMap::new();
    for (node, tick, won) in &log {
        ticks.entry(*tick).or_default().push((node, *won));
    }
    assert!(ticks.len() >= 2, "too few ticks in 3.3 s: {log:?}");
    for (tick, calls) in &ticks {
        assert_eq!(tick.timestamp_subsec_nanos(), 0, "ticks fall on seconds");
        assert_eq!(
            calls.iter().filter(|(_, won)| *won).count(),
            1,
            "tick {tick} enqueued other than once: {calls:?}"
        );
        let mut nodes: Vec<&str> = calls.iter().map(|(n, _)| *n).collect();
        nodes.sort_unstable();
        nodes.dedup();
        assert_eq!(nodes.len(), calls.len(), "a node repeated tick {tick}");
    }
    let keys: Vec<DateTime<Utc>> = ticks.keys().copied().collect();
    assert!(
        keys.windows(2)
            .all(|w| w[1] - w[0] == chrono::Duration::seconds(1)),
        "ticks skipped or repeated: {keys:?}"
    );
    // Both nodes tried every tick but possibly the one under way at stop.
    assert!(log.len() + 1 >= 2 * ticks.len(), "{log:?}");

    let jobs = ids_of_kind(b, "cron-job").await;
    assert_eq!(jobs.len(), ticks.len(), "one job per tick");
    for id in jobs {
        let j = b.job(id).await;
        assert_eq!(j.queue, "cron");
        assert_eq!(j.payload, json!({ "from": "cron" }));
        assert!(j.tags.contains(&"cron:every-second".to_owned()), "{j:?}");
    }

    // Directly: a tick is taken once; older ticks are refused; the next one is taken.
    let tick = DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let direct = || NewJob::new("direct-job", json!({})).queue("cron");
    let s = &b.storage;
    assert!(s.cron_tick("direct", tick, direct()).await.unwrap());
    assert!(!s.cron_tick("direct", tick, direct()).await.unwrap());
    let earlier = tick - chrono::Duration::seconds(1);
    assert!(!s.cron_tick("direct", earlier, direct()).await.unwrap());
    let next = tick + chrono::Duration::seconds(1);
    assert!(s.cron_tick("direct", next, direct()).await.unwrap());
    assert!(s.cron_tick("other", tick, direct()).await.unwrap());
    assert_eq!(ids_of_kind(b, "direct-job").await.len(), 3);
}

// 13. ------------------------------------------------------------------------------------------

/// Two workers (each over a pool of its own) drain 2,000 jobs: every job runs exactly once, on
/// its first attempt, and completes.
async fn case_two_workers_drain(b: &Backend) {
    let n = 2000;
    let runs: Runs = Arc::default();
    let per_worker: Arc<Mutex<HashMap<&'static str, u32>>> = Arc::default();
    let registry = |name: &'static str| {
        let (r, w) = (Arc::clone(&runs), Arc::clone(&per_worker));
        Registry::new().register_fn("drain", JobOptions::default(), move |_, ctx| {
            let (r, w) = (Arc::clone(&r), Arc::clone(&w));
            async move {
                bump(&r, ctx.id);
                *w.lock().unwrap().entry(name).or_default() += 1;
                Ok(())
            }
        })
    };
    let config = |name: &str| worker_config(8).id(name).poll_interval(ms(100));
    let w1 = start(b, registry("one"), config("one")).await;
    let w2 = Worker::start(b.another_storage().await, registry("two"), config("two"))
        .await
        .unwrap();

    let mut ids = b
        .queue
        .enqueue_many((0..n / 2).map(|_| new_job("drain")).collect())
        .await
        .unwrap();
    ids.extend(
        b.queue
            .enqueue_many((0..n / 2).map(|_| new_job("drain")).collect())
            .await
            .unwrap(),
    );
    assert_eq!(ids.len(), n);
    wait_for(
        "2,000 jobs to complete",
        Duration::from_secs(30),
        || async move {
            let stats = b.queue.stats().await.unwrap();
            stats
                .iter()
                .find(|s| s.queue == Q)
                .is_some_and(|s| s.count(JobState::Completed) == 2000)
        },
    )
    .await;
    w1.shutdown().await;
    w2.shutdown().await;

    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), n);
    let twice: Vec<_> = runs.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "jobs run other than once: {twice:?}");
    let unique: HashSet<JobId> = ids.iter().copied().collect();
    assert_eq!(runs.keys().copied().collect::<HashSet<_>>(), unique);
    let mut f = ListFilter::default();
    f.limit = Some(1000);
    f.kind = Some("drain".into());
    let mut seen = 0;
    loop {
        let page = b.queue.list(&f).await.unwrap();
        let Some(last) = page.last() else { break };
        f.before_id = Some(last.id);
        for j in &page {
            assert_eq!(j.state, JobState::Completed);
            assert_eq!(j.attempt, 1, "{j:?}");
            assert!(j.errors.is_empty());
        }
        seen += page.len();
    }
    assert_eq!(seen, n);
    eprintln!(
        "{:?}: jobs per worker {:?}",
        b.kind,
        per_worker.lock().unwrap()
    );
}

// 14. ------------------------------------------------------------------------------------------

/// A cancel asked for in one database reaches only that database's job, even where another
/// database in the same process has a running job with the same id.
async fn case_cancel_stays_in_its_database(b: &Backend) {
    let other = match b.kind {
        Kind::Sqlite => Backend::sqlite().await,
        Kind::Postgres => Backend::postgres()
            .await
            .expect("PostgreSQL answered a moment ago"),
    };
    let registry = || {
        Registry::new().register_fn(
            "waits",
            JobOptions::default(),
            waits_for_cancel(&Arc::default(), &Arc::default(), OnCancel::ReturnErr),
        )
    };
    let config = || {
        worker_config(2)
            .lease(Duration::from_secs(15))
            .poll_interval(ms(100))
    };
    let wa = start(b, registry(), config()).await;
    let wb = start(&other, registry(), config()).await;
    let a = b.queue.enqueue(new_job("waits")).await.unwrap().id;
    let o = other.queue.enqueue(new_job("waits")).await.unwrap().id;
    assert_eq!(a, o, "both databases number their first job alike");
    wait_state(b, a, JobState::Running, Duration::from_secs(5)).await;
    wait_state(&other, o, JobState::Running, Duration::from_secs(5)).await;
    tokio::time::sleep(ms(100)).await;

    b.queue.cancel(a).await.unwrap();
    wait_state(b, a, JobState::Cancelled, Duration::from_secs(3)).await;
    tokio::time::sleep(ms(300)).await;
    let j = other.job(o).await;
    assert_eq!(
        j.state,
        JobState::Running,
        "the other database's job: {j:?}"
    );
    assert!(!j.cancel_requested);

    wa.shutdown_within(Some(ms(100))).await;
    wb.shutdown_within(Some(ms(100))).await;
    other.close().await;
}

// 15. ------------------------------------------------------------------------------------------

/// Jobs enqueued while a worker of the process is idle start at once (on SQLite they are inserted
/// already claimed for it); a busy worker, a delayed job, a held unique key and a stopped worker
/// all leave the job to the ordinary path, and every job runs exactly once.
async fn case_idle_worker_takes_new_jobs(b: &Backend) {
    let runs: Runs = Arc::default();
    let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
    let r = Arc::clone(&runs);
    let registry = Registry::new().register_fn("gated", JobOptions::default(), move |_, ctx| {
        let r = Arc::clone(&r);
        let mut gate = gate_rx.clone();
        async move {
            bump(&r, ctx.id);
            let _open = gate.wait_for(|open| *open).await;
            Ok(())
        }
    });
    let worker = start(b, registry, worker_config(1).id("taker")).await;

    // Idle worker: the job is claimed for it straight away.
    let first = b.queue.enqueue(new_job("gated")).await.unwrap();
    assert!(!first.duplicate);
    if b.kind == support::Kind::Sqlite {
        let j = b.job(first.id).await;
        assert_eq!(j.state, JobState::Running, "taken at insert: {j:?}");
        assert_eq!(j.locked_by.as_deref(), Some("taker"));
        assert_eq!(j.attempt, 1);
        assert!(
            j.lease_expires_at.is_some() && j.attempted_at.is_some(),
            "{j:?}"
        );
    }
    let rr = &runs;
    wait_for(
        "the first job to start",
        Duration::from_secs(5),
        || async move { count(rr, first.id) == 1 },
    )
    .await;

    // The only slot is busy: the next job waits as available, then runs after the first.
    let second = b.queue.enqueue(new_job("gated")).await.unwrap();
    tokio::time::sleep(ms(100)).await;
    let j = b.job(second.id).await;
    assert!(
        matches!(j.state, JobState::Available | JobState::Running) && count(&runs, second.id) == 0,
        "a busy worker does not start a second job: {j:?}"
    );
    // A held unique key returns the holder and runs nothing new.
    let keyed = b
        .queue
        .enqueue(new_job("gated").unique_key("k"))
        .await
        .unwrap();
    let again = b
        .queue
        .enqueue(new_job("gated").unique_key("k"))
        .await
        .unwrap();
    assert!(again.duplicate && again.id == keyed.id);
    // A delayed job is not taken early, even by an idle worker.
    let later = b
        .queue
        .enqueue(new_job("gated").run_at(Utc::now() + chrono_ms(60_000)))
        .await
        .unwrap();
    gate_tx.send(true).unwrap();
    for id in [first.id, second.id, keyed.id] {
        let j = wait_state(b, id, JobState::Completed, Duration::from_secs(5)).await;
        assert_eq!(j.attempt, 1, "{j:?}");
        assert_eq!(count(&runs, id), 1, "job {id} ran once");
    }
    let j = b.job(later.id).await;
    assert_eq!(j.state, JobState::Scheduled, "{j:?}");
    assert_eq!(count(&runs, later.id), 0);

    // A stopped worker takes nothing: the job stays available for the next one.
    worker.shutdown().await;
    let orphan = b.queue.enqueue(new_job("gated")).await.unwrap();
    let j = b.job(orphan.id).await;
    assert_eq!(j.state, JobState::Available, "{j:?}");
    assert_eq!((j.attempt, j.locked_by), (0, None));
}

// 16. ------------------------------------------------------------------------------------------

/// A storage that does not keep completed jobs deletes each as it completes; failed jobs stay
/// (discarded, with their errors) for inspection and retry, and a job that fails once and then
/// succeeds is deleted when it succeeds.
async fn case_completed_jobs_deleted_unless_kept(b: &Backend) {
    let storage = b.storage_keeping_completed(false).await;
    let queue = malaka_jobs::Queue::new(Arc::clone(&storage));
    let fast = JobOptions::default().backoff(
        RetryPolicy::new(u32::MAX)
            .initial_delay(ms(10))
            .max_delay(ms(20)),
    );
    let registry = Registry::new()
        .register_fn("ok", JobOptions::default(), |_, _| async { Ok(()) })
        .register_fn("bad", fast.clone(), |_, _| async {
            Err(JobError::permanent("no such sku"))
        })
        .register_fn("flaky", fast, |_, ctx: JobContext| async move {
            if ctx.attempt == 1 {
                Err(JobError::retryable("first try fails"))
            } else {
                Ok(())
            }
        });
    let worker = Worker::start(Arc::clone(&storage), registry, worker_config(4))
        .await
        .expect("worker starts");
    let ok = queue.enqueue(new_job("ok")).await.unwrap().id;
    let bad = queue.enqueue(new_job("bad")).await.unwrap().id;
    let flaky = queue.enqueue(new_job("flaky")).await.unwrap().id;
    for id in [ok, flaky] {
        let s = &storage;
        wait_for(
            "the completed job to be deleted",
            Duration::from_secs(5),
            || async move { s.get(id).await.unwrap().is_none() },
        )
        .await;
    }
    let failed = wait_state(b, bad, JobState::Discarded, Duration::from_secs(5)).await;
    assert_eq!(failed.errors.len(), 1, "{failed:?}");
    assert!(failed.errors[0].error.contains("no such sku"), "{failed:?}");
    let stats = queue.stats().await.unwrap();
    let q = stats.iter().find(|s| s.queue == Q).expect("queue stats");
    assert_eq!(q.count(JobState::Completed), 0);
    assert_eq!(q.count(JobState::Discarded), 1);
    worker.shutdown().await;
}

// 17. ------------------------------------------------------------------------------------------

/// A job that snoozes runs again after the delay without spending an attempt: with one attempt
/// allowed it snoozes twice and still completes, with no error recorded, and not early.
async fn case_snooze_spends_no_attempt(b: &Backend) {
    let runs: Runs = Arc::default();
    let r = Arc::clone(&runs);
    let registry = Registry::new().register_fn("later", JobOptions::default(), move |_, ctx| {
        let n = bump(&r, ctx.id);
        async move {
            if n < 3 {
                Err(JobError::snooze(ms(150), "target busy"))
            } else {
                Ok(())
            }
        }
    });
    let worker = start(b, registry, worker_config(2)).await;
    let started = Instant::now();
    let id = b
        .queue
        .enqueue(new_job("later").max_attempts(1))
        .await
        .unwrap()
        .id;
    let r = &runs;
    wait_for("the third run", Duration::from_secs(5), || async move {
        count(r, id) == 3
    })
    .await;
    assert!(
        started.elapsed() >= ms(300),
        "snoozes wait: {:?}",
        started.elapsed()
    );
    let j = wait_state(b, id, JobState::Completed, Duration::from_secs(5)).await;
    assert_eq!((j.attempt, j.max_attempts), (3, 3), "{j:?}");
    assert!(j.errors.is_empty(), "{j:?}");
    worker.shutdown().await;
}

// 18. ------------------------------------------------------------------------------------------

/// After a backlog drains (both claimers at work), new jobs are picked up at once, not at the
/// next poll: a wake-up is never spent by the claimer that only helps with backlogs.
async fn case_wakes_up_after_a_backlog(b: &Backend) {
    let runs: Runs = Arc::default();
    let r = Arc::clone(&runs);
    let registry = Registry::new().register_fn("quick", JobOptions::default(), move |_, ctx| {
        bump(&r, ctx.id);
        async { Ok(()) }
    });
    let worker = start(
        b,
        registry,
        worker_config(8).poll_interval(Duration::from_secs(30)),
    )
    .await;
    for round in 0..3 {
        let n = if round == 0 { 2000 } else { 20 };
        let started = Instant::now();
        let ids = b
            .queue
            .enqueue_many((0..n).map(|_| new_job("quick")).collect())
            .await
            .unwrap();
        let r = &runs;
        let ids = &ids;
        wait_for("the jobs to run", Duration::from_secs(10), || async move {
            ids.iter().all(|id| count(r, *id) == 1)
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round} waited for a poll: {:?}",
            started.elapsed()
        );
        tokio::time::sleep(ms(100)).await;
    }
    worker.shutdown().await;
}

// 19. ------------------------------------------------------------------------------------------

/// A job another process commits (here: a connection of its own, outside every pool and hook of
/// this process, in a transaction with a business row) wakes an idle worker at once: on
/// PostgreSQL by `NOTIFY`, on SQLite by the worker's watcher (`PRAGMA data_version`), well under
/// the poll interval, every time; a job scheduled for later by another process is run at its
/// time, not at the next poll. Commits that add no job (the business table alone) wake nothing.
async fn case_wakes_for_other_processes(b: &Backend) {
    let started: Arc<Mutex<Vec<(JobId, Instant)>>> = Arc::default();
    let s = Arc::clone(&started);
    let registry = Registry::new().register_fn("remote", JobOptions::default(), move |_, ctx| {
        let s = Arc::clone(&s);
        async move {
            s.lock().unwrap().push((ctx.id, Instant::now()));
            Ok(())
        }
    });
    let poll = Duration::from_secs(30);
    let worker = start(b, registry, worker_config(2).poll_interval(poll)).await;
    // Let the worker find the queue empty and go to sleep on its (long) poll.
    tokio::time::sleep(ms(300)).await;
    let mut worst = Duration::ZERO;
    for i in 0..5 {
        let t0 = Instant::now();
        let out = b.enqueue_elsewhere(&new_job("remote")).await;
        let st = &started;
        wait_for(
            "the other process's job to start",
            ms(5000),
            || async move { st.lock().unwrap().iter().any(|(id, _)| *id == out.id) },
        )
        .await;
        let at = started
            .lock()
            .unwrap()
            .iter()
            .find(|(id, _)| *id == out.id)
            .map(|(_, at)| *at)
            .unwrap();
        worst = worst.max(at - t0);
        eprintln!(
            "{:?}: job {i} of another process started after {:?}",
            b.kind,
            at - t0
        );
        tokio::time::sleep(ms(50)).await;
    }
    assert!(
        worst < ms(500),
        "a job of another process waited {worst:?} (poll is {poll:?}): no cross-process wake-up"
    );
    // Scheduled 400 ms ahead by another process: runs at its time, not at the next poll.
    let t0 = Instant::now();
    let later = b
        .enqueue_elsewhere(&new_job("remote").run_at(Utc::now() + chrono_ms(400)))
        .await;
    let st = &started;
    wait_for("the scheduled job to start", ms(5000), || async move {
        st.lock().unwrap().iter().any(|(id, _)| *id == later.id)
    })
    .await;
    let took = t0.elapsed();
    assert!(
        took >= ms(390) && took < ms(1500),
        "a job scheduled 400 ms ahead by another process started after {took:?}"
    );
    assert_eq!(started.lock().unwrap().len(), 6, "each job ran once");
    worker.shutdown().await;
}
