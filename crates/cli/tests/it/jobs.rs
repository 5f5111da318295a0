//! The job queue through the binary: the `malaka jobs` commands and `malaka worker` processes on
//! SQLite and PostgreSQL (exactly-once draining by two workers, rescue after a SIGKILL).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // test helpers may panic

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use malaka_jobs::{JobRecord, JobState, NewJob, Queue};
use malaka_server::config::DatabaseConfig;
use malaka_server::db::Database;
use malaka_server::db::DatabaseExt as _;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_malaka");

/// These tests look at completed jobs, which the default configuration deletes as they complete.
const KEEP_COMPLETED: &str = "1h";

fn keeping_completed() -> malaka_server::config::JobsConfig {
    malaka_server::config::JobsConfig {
        completed_retention: Duration::from_secs(3600),
        ..Default::default()
    }
}

/// Runs `malaka <args>` in `dir` and returns its output.
fn malaka(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env("MALAKA_JOBS__COMPLETED_RETENTION", KEEP_COMPLETED)
        .output()
        .expect("run malaka")
}

/// Runs `malaka <args>`, expects success, and returns stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = malaka(dir, args);
    assert!(
        out.status.success(),
        "malaka {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `malaka <args> --json`, expects success, and parses stdout.
fn ok_json(dir: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = ok(dir, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// Runs `malaka <args>`, expects a failure, and returns (exit code, stderr).
fn fails(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = malaka(dir, args);
    assert!(!out.status.success(), "malaka {args:?} should fail");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect()
}

/// A `malaka worker` process whose JSON log is read as it comes.
struct WorkerProcess {
    child: Child,
    /// (job_id, attempt) of every `job ran` line.
    runs: Arc<Mutex<Vec<(i64, i64)>>>,
    /// Every other line, for failure messages.
    log: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    ready: mpsc::Receiver<()>,
}

impl WorkerProcess {
    /// Starts `malaka --log-format json worker` in `dir` with `env`, at log level info, and
    /// waits until it reports that it runs.
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let w = Self::spawn(dir, env);
        w.wait_ready();
        w
    }

    /// Starts `malaka --log-format json worker` in `dir` with `env`, at log level info.
    fn spawn(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .current_dir(dir)
            .args(["--log-format", "json", "worker"])
            .env("RUST_LOG", "info")
            .env("MALAKA_JOBS__COMPLETED_RETENTION", KEEP_COMPLETED)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn malaka worker");
        let stderr = child.stderr.take().unwrap();
        let runs = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready) = mpsc::channel();
        let reader = {
            let (runs, log) = (Arc::clone(&runs), Arc::clone(&log));
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let Ok(v) = serde_json::from_str::<Value>(&line) else {
                        log.lock().unwrap().push(line);
                        continue;
                    };
                    if v["message"] == "job ran" {
                        runs.lock().unwrap().push((
                            v["job_id"].as_i64().unwrap(),
                            v["attempt"].as_i64().unwrap(),
                        ));
                        continue;
                    }
                    if v["message"] == "malaka worker is running" {
                        let _ = ready_tx.send(());
                    }
                    log.lock().unwrap().push(line);
                }
            })
        };
        Self {
            child,
            runs,
            log,
            reader: Some(reader),
            ready,
        }
    }

    /// Waits until the worker reports that it runs.
    fn wait_ready(&self) {
        if self.ready.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("malaka worker did not start:\n{}", self.log_text());
        }
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn runs(&self) -> Vec<(i64, i64)> {
        self.runs.lock().unwrap().clone()
    }

    /// SIGTERM, then waits for the exit (and the end of its log); asserts exit code 0 within
    /// `limit`.
    fn terminate(mut self, limit: Duration) -> Vec<(i64, i64)> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "malaka worker did not exit within {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        assert!(status.success(), "exit {status}:\n{}", self.log_text());
        self.runs()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // A failed test must not leave workers behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it gives a value, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn job(queue: &Queue, id: i64) -> JobRecord {
    queue.get(id).await.unwrap().expect("job exists")
}

#[test]
fn jobs_commands_round_trip_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut v = args.to_vec();
        v.extend(["--data-dir", "d"]);
        v
    }

    // enqueue: defaults, then queue/priority/unique key, a duplicate, and a delayed job.
    let a = ok_json(
        d,
        &with(&["jobs", "enqueue", "sleep", "--payload", r#"{"ms": 10}"#]),
    );
    assert_eq!(a, json!({"id": 1, "duplicate": false}));
    let b = ok_json(
        d,
        &with(&[
            "jobs",
            "enqueue",
            "noop",
            "--queue",
            "mail",
            "--priority",
            "-5",
            "--unique-key",
            "k1",
        ]),
    );
    assert_eq!(b, json!({"id": 2, "duplicate": false}));
    let dup = ok_json(d, &with(&["jobs", "enqueue", "noop", "--unique-key", "k1"]));
    assert_eq!(dup, json!({"id": 2, "duplicate": true}));
    let text = ok(d, &with(&["jobs", "enqueue", "noop", "--unique-key", "k1"]));
    assert!(
        text.contains("job 2 already holds unique key `k1`"),
        "{text}"
    );
    // Ids are never reused, and SQLite spends one on each duplicate: don't count on 3.
    let text = ok(d, &with(&["jobs", "enqueue", "noop", "--delay", "1h"]));
    let c: i64 = text
        .strip_prefix("enqueued job ")
        .and_then(|t| t.strip_suffix(" on queue default\n"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(c > 2);
    let c_str = c.to_string();
    let c_arg = c_str.as_str();

    // list: newest first, filters, paging.
    let all = ok_json(d, &with(&["jobs", "list"]));
    assert_eq!(ids(&all), [c, 2, 1]);
    assert_eq!(all[0]["state"], "scheduled");
    assert_eq!(all[1]["queue"], "mail");
    assert_eq!(all[1]["priority"], -5);
    assert_eq!(all[1]["unique_key"], "k1");
    assert_eq!(all[2]["payload"], json!({"ms": 10}));
    assert_eq!(
        ids(&ok_json(d, &with(&["jobs", "list", "--queue", "mail"]))),
        [2]
    );
    assert_eq!(
        ids(&ok_json(
            d,
            &with(&[
                "jobs",
                "list",
                "--state",
                "scheduled,available",
                "--kind",
                "noop"
            ])
        )),
        [c, 2]
    );
    assert_eq!(
        ids(&ok_json(
            d,
            &with(&["jobs", "list", "--state", "running", "--state", "scheduled"])
        )),
        [c]
    );
    assert_eq!(
        ids(&ok_json(
            d,
            &with(&["jobs", "list", "--limit", "1", "--before", c_arg])
        )),
        [2]
    );
    let table = ok(d, &with(&["jobs", "list", "--limit", "2"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID  STATE"), "{table}");
    assert!(
        lines[1].starts_with(&format!("{c:<2}  scheduled  default  noop")),
        "{table}"
    );
    assert!(lines[3].contains("--before 2"), "{table}");
    assert_eq!(
        ok(d, &with(&["jobs", "list", "--kind", "nothing"])),
        "no jobs match\n"
    );

    // show and stats.
    let shown = ok(d, &with(&["jobs", "show", "1"]));
    assert!(shown.contains("kind:             sleep\n"), "{shown}");
    assert!(shown.contains("payload:          {\"ms\":10}\n"), "{shown}");
    assert!(shown.contains("attempt:          0 of 20\n"), "{shown}");
    assert_eq!(
        ok_json(d, &with(&["jobs", "show", "2"]))["queue"],
        json!("mail")
    );
    let stats = ok_json(d, &with(&["jobs", "stats"]));
    let stats = stats.as_array().unwrap();
    assert_eq!(stats.len(), 2, "{stats:?}");
    assert_eq!(stats[0]["queue"], "default");
    assert_eq!(stats[0]["counts"], json!({"available": 1, "scheduled": 1}));
    assert_eq!(stats[1]["queue"], "mail");
    assert_eq!(stats[1]["counts"], json!({"available": 1}));
    assert!(stats[0]["oldest_available_age"].as_f64().unwrap() >= 0.0);
    let table = ok(d, &with(&["jobs", "stats"]));
    assert!(
        table.starts_with("QUEUE    AVAILABLE  SCHEDULED"),
        "{table}"
    );
    assert!(table.contains("\nmail "), "{table}");

    // cancel and retry, including the refusals.
    assert_eq!(
        ok(d, &with(&["jobs", "cancel", "1"])),
        "job 1 is cancelled\n"
    );
    let again = ok_json(d, &with(&["jobs", "cancel", "1"]));
    assert_eq!(again["state"], "cancelled");
    assert!(again["finished_at"].is_string());
    let r = ok_json(d, &with(&["jobs", "retry", "1"]));
    assert_eq!(r["state"], "available");
    assert_eq!(r["attempt"], 0);
    assert!(r["finished_at"].is_null());
    let (code, err) = fails(d, &with(&["jobs", "retry", "1"]));
    assert_eq!(code, 1);
    assert!(
        err.contains("job 1 is available: only discarded, cancelled, retryable or scheduled"),
        "{err}"
    );
    let text = ok(d, &with(&["jobs", "retry", c_arg]));
    assert_eq!(
        text,
        format!("job {c} is available again (attempts used: 0 of 20)\n")
    );
    let (code, err) = fails(d, &with(&["jobs", "show", "999"]));
    assert_eq!(code, 1);
    assert!(err.contains("job 999 not found"), "{err}");
    let (_, err) = fails(d, &with(&["jobs", "cancel", "999"]));
    assert!(err.contains("job 999 not found"), "{err}");
    let (_, err) = fails(d, &with(&["jobs", "retry", "999"]));
    assert!(err.contains("job 999 not found"), "{err}");

    // Bad arguments are named.
    let (code, err) = fails(d, &with(&["jobs", "list", "--state", "done"]));
    assert_eq!(code, 2);
    assert!(err.contains("unknown job state `done`"), "{err}");
    let (code, err) = fails(d, &with(&["jobs", "enqueue", "noop", "--payload", "{"]));
    assert_eq!(code, 2);
    assert!(err.contains("not JSON"), "{err}");
    let (_, err) = fails(d, &with(&["jobs", "enqueue", "noop", "--queue", ""]));
    assert!(err.contains("queue must be 1 to 100 characters"), "{err}");

    // Every subcommand says what it does.
    let help = ok(d, &["jobs", "--help"]);
    for cmd in ["list", "show", "stats", "enqueue", "cancel", "retry"] {
        assert!(help.contains(cmd), "{help}");
    }
    for (cmd, phrase) in [
        ("list", "--before"),
        ("show", "every failed attempt"),
        ("stats", "per queue and state"),
        ("enqueue", "--unique-key"),
        ("cancel", "worker is asked"),
        ("retry", "discarded, cancelled, retryable or scheduled"),
    ] {
        let text = ok(d, &["jobs", cmd, "--help"]);
        assert!(
            text.contains(phrase),
            "jobs {cmd} --help lacks {phrase}:\n{text}"
        );
    }
    assert!(ok(d, &["worker", "--help"]).contains("SIGTERM"));
    assert!(ok(d, &["--help"]).contains("worker"));
}

#[tokio::test]
async fn sqlite_worker_runs_what_the_cli_enqueues_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The `mail` queue is worked only because the environment says so.
    // The poll is long: a job another process enqueues must be found by the worker's watcher
    // (`jobs.watch_interval`), not by the poll.
    let env = [
        ("MALAKA_DATA_DIR", "d"),
        ("MALAKA_JOBS__QUEUES__MAIL__CONCURRENCY", "2"),
        ("MALAKA_JOBS__POLL_INTERVAL", "1h"),
    ];
    ok(
        d,
        &[
            "jobs",
            "enqueue",
            "sleep",
            "--payload",
            r#"{"ms": 5}"#,
            "--data-dir",
            "d",
        ],
    );
    ok(
        d,
        &[
            "jobs",
            "enqueue",
            "sleep",
            "--payload",
            r#"{"ms": 5}"#,
            "--queue",
            "mail",
            "--data-dir",
            "d",
        ],
    );
    ok(
        d,
        &[
            "jobs",
            "enqueue",
            "nobody-knows-me",
            "--max-attempts",
            "3",
            "--data-dir",
            "d",
        ],
    );
    let worker = WorkerProcess::start(d, &env);
    // A job enqueued by another process while the worker runs is found at once by its watcher
    // (within `jobs.watch_interval`, 5 ms), not by the hour-long poll.
    ok(
        d,
        &[
            "jobs",
            "enqueue",
            "sleep",
            "--payload",
            r#"{"ms": 5}"#,
            "--data-dir",
            "d",
        ],
    );
    let enqueued = Instant::now();
    let db = Database::connect(
        &format!("sqlite://{}", d.join("d/malaka.db").display()),
        &DatabaseConfig::default(),
    )
    .await
    .unwrap();
    let queue = &Queue::new(db.job_storage(&keeping_completed()));
    eventually(
        Duration::from_secs(20),
        "four jobs finished",
        || async move {
            let done = queue
                .list(&{
                    let mut f = malaka_jobs::ListFilter::default();
                    f.states = vec![JobState::Completed, JobState::Discarded];
                    f
                })
                .await
                .unwrap();
            (done.len() == 4).then_some(())
        },
    )
    .await;
    let waited = enqueued.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "the job another process enqueued finished after {waited:?}: no cross-process wake-up"
    );
    let unknown = job(queue, 3).await;
    assert_eq!(unknown.state, JobState::Discarded);
    assert!(
        unknown.errors[0]
            .error
            .contains("unknown job kind `nobody-knows-me`"),
        "{:?}",
        unknown.errors
    );
    for id in [1, 2, 4] {
        let j = job(queue, id).await;
        assert_eq!((j.state, j.attempt), (JobState::Completed, 1), "{j:?}");
    }
    db.close().await;
    let mut runs = worker.terminate(Duration::from_secs(8));
    runs.sort_unstable();
    assert_eq!(runs, [(1, 1), (2, 1), (4, 1)]);
}

#[tokio::test]
async fn a_worker_stopped_mid_job_exits_zero_in_time_and_gives_the_job_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env = [("MALAKA_DATA_DIR", "d"), ("MALAKA_SHUTDOWN_TIMEOUT", "1s")];
    ok(
        d,
        &[
            "jobs",
            "enqueue",
            "sleep",
            "--payload",
            r#"{"ms": 60000}"#,
            "--data-dir",
            "d",
        ],
    );
    let worker = WorkerProcess::start(d, &env);
    let db = Database::connect(
        &format!("sqlite://{}", d.join("d/malaka.db").display()),
        &DatabaseConfig::default(),
    )
    .await
    .unwrap();
    let queue = &Queue::new(db.job_storage(&keeping_completed()));
    eventually(Duration::from_secs(20), "the job runs", || async move {
        (job(queue, 1).await.state == JobState::Running).then_some(())
    })
    .await;
    let started = Instant::now();
    worker.terminate(Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // Not lost, not waiting for its lease: available again at once, its attempt counted.
    let j = job(queue, 1).await;
    assert_eq!(j.state, JobState::Available, "{j:?}");
    assert_eq!(j.attempt, 1);
    assert!(
        j.lease_expires_at.is_none() && j.locked_by.is_none(),
        "{j:?}"
    );
    db.close().await;
}

/// A migrated fresh PostgreSQL database and a queue on it, or `None` when PostgreSQL is not
/// there outside CI.
async fn fresh_queue() -> Option<(String, String, Database, Queue)> {
    let (url, name) = common::fresh_postgres().await?;
    let db = Database::connect(&url, &DatabaseConfig::default())
        .await
        .unwrap();
    db.migrate().await.unwrap();
    let queue = Queue::new(db.job_storage(&keeping_completed()));
    Some((url, name, db, queue))
}

#[tokio::test]
async fn two_postgres_workers_run_ten_thousand_jobs_exactly_once() {
    const N: usize = 10_000;
    let Some((url, name, db, queue)) = fresh_queue().await else {
        return;
    };
    let queue = &queue;
    let enqueued = queue
        .enqueue_many(
            (0..N)
                .map(|_| NewJob::new("sleep", json!({"ms": 0})))
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(enqueued.len(), N);
    let dir = tempfile::tempdir().unwrap();
    let env = [("MALAKA_DATABASE__URL", url.as_str())];
    let started = Instant::now();
    // Both start together, so each gets a share of the backlog.
    let a = WorkerProcess::spawn(dir.path(), &env);
    let b = WorkerProcess::spawn(dir.path(), &env);
    a.wait_ready();
    b.wait_ready();
    eventually(
        Duration::from_secs(240),
        "all jobs completed",
        || async move {
            let stats = queue.stats().await.unwrap();
            let done = stats
                .iter()
                .map(|s| s.count(JobState::Completed))
                .sum::<i64>();
            (done == N as i64).then_some(())
        },
    )
    .await;
    eprintln!("two workers drained {N} jobs in {:?}", started.elapsed());
    let runs_a = a.terminate(Duration::from_secs(8));
    let runs_b = b.terminate(Duration::from_secs(8));

    let Database::Postgres(pool) = &db else {
        unreachable!()
    };
    let (completed_first_try, total): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'completed' AND attempt = 1 \
                                  AND jsonb_array_length(errors) = 0), count(*) \
         FROM malaka_jobs",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((completed_first_try, total), (N as i64, N as i64));

    assert!(
        !runs_a.is_empty() && !runs_b.is_empty(),
        "a ran {}, b ran {}",
        runs_a.len(),
        runs_b.len()
    );
    eprintln!(
        "worker a ran {}, worker b ran {}",
        runs_a.len(),
        runs_b.len()
    );
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for (id, attempt) in runs_a.iter().chain(&runs_b) {
        assert_eq!(*attempt, 1, "job {id}");
        *seen.entry(*id).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    let mut ran: Vec<i64> = seen.into_keys().collect();
    ran.sort_unstable();
    assert_eq!(ran, enqueued);
    db.close().await;
    common::drop_postgres(&name).await;
}

#[tokio::test]
async fn postgres_job_of_a_killed_worker_is_rescued_by_another_worker_after_its_lease() {
    let Some((url, name, db, queue)) = fresh_queue().await else {
        return;
    };
    let queue = &queue;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("malaka.toml"),
        "[jobs]\nrescue_every = \"200ms\"\npoll_interval = \"500ms\"\n",
    )
    .unwrap();
    let env = [
        ("MALAKA_DATABASE__URL", url.as_str()),
        ("MALAKA_JOBS__LEASE", "2s"),
    ];
    let id = queue
        .enqueue(NewJob::new("sleep", json!({"ms": 3000})))
        .await
        .unwrap()
        .id;
    let mut first = WorkerProcess::start(dir.path(), &env);
    let running = eventually(
        Duration::from_secs(20),
        "the first worker runs it",
        || async move {
            let j = job(queue, id).await;
            (j.state == JobState::Running).then_some(j)
        },
    )
    .await;
    assert_eq!(running.attempt, 1);
    first.child.kill().unwrap(); // SIGKILL: no drain, no release, the lease just stops renewing
    first.child.wait().unwrap();
    let killed = Instant::now();

    let second = WorkerProcess::start(dir.path(), &env);
    let done = eventually(
        Duration::from_secs(30),
        "the job completes",
        || async move {
            let j = job(queue, id).await;
            j.state.is_final().then_some(j)
        },
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(done.state, JobState::Completed, "{done:?}");
    assert_eq!(done.attempt, 2);
    assert_eq!(done.errors.len(), 1, "{:?}", done.errors);
    assert_eq!(done.errors[0].attempt, 1);
    assert!(
        done.errors[0].error.contains("lease expired"),
        "{:?}",
        done.errors
    );
    assert_ne!(done.locked_by, running.locked_by);
    // Lease (2 s, renewed every 2/3 s until the kill) + rescue (200 ms) + the 3 s sleep.
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(12), "{took:?}");
    assert!(first.runs().is_empty(), "{:?}", first.runs());
    let runs = second.terminate(Duration::from_secs(8));
    assert_eq!(runs, [(id, 2)]);
    db.close().await;
    common::drop_postgres(&name).await;
}
