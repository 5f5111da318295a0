//! Amazon SQS for tokio services, on `aws-sdk-sqs` and `malaka-runtime`.
//!
//! - [`Consumer`]: N long-polling pollers per queue (up to 10 messages a receive, never more
//!   than there is room for), each message run by a [`Handler`] on a bounded [`WorkerPool`];
//!   while a handler runs, a heartbeat extends the message's visibility timeout so it is not
//!   delivered again; successes are deleted in batches; a message the handler wants retried is
//!   made visible again after a backoff (its queue's redrive policy moves it to the dead-letter
//!   queue after `maxReceiveCount`). Shutdown stops receiving, lets running handlers finish and
//!   flushes the deletes: no message is left half done (one not finished is delivered again).
//! - [`Publisher`]: `SendMessageBatch` in tens, FIFO aware (group and deduplication ids).
//!
//! ```no_run
//! use std::sync::Arc;
//! use malaka_sqs::{Consumer, ConsumerConfig, Handler, Message, Outcome};
//!
//! struct Print;
//! #[async_trait::async_trait]
//! impl Handler for Print {
//!     async fn handle(&self, m: &Message) -> Outcome {
//!         println!("{}: {}", m.id, m.body);
//!         Outcome::Done
//!     }
//! }
//!
//! # async fn demo() -> Result<(), malaka_sqs::SqsError> {
//! let client = malaka_sqs::client("us-east-1", Some("http://127.0.0.1:5055")).await;
//! let consumer = Consumer::start(client, ConsumerConfig::new("http://127.0.0.1:5055/123456789012/in"), Arc::new(Print))?;
//! // ...
//! consumer.shutdown(std::time::Duration::from_secs(10)).await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use malaka_runtime::{
    PoolConfig, RetryPolicy, Supervised, Supervisor, TaskContext, TaskSpec, WorkerPool,
};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

/// The SDK, for what this crate does not wrap.
pub use aws_sdk_sqs as sdk;
pub use aws_sdk_sqs::Client;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqsError {
    /// An SQS call failed.
    #[error("SQS {call}: {message}")]
    Call {
        /// Which call.
        call: &'static str,
        /// What it said.
        message: String,
    },
    /// Some entries of a batch were refused.
    #[error("SQS refused {failed} of {total} messages: {first}")]
    Partial {
        /// How many.
        failed: usize,
        /// Of.
        total: usize,
        /// The first reason.
        first: String,
    },
    /// The worker pool could not be made.
    #[error(transparent)]
    Runtime(#[from] malaka_runtime::Error),
}

fn call_err(call: &'static str, e: impl std::fmt::Display) -> SqsError {
    SqsError::Call {
        call,
        message: e.to_string(),
    }
}

/// A client for `region`, at `endpoint_url` when given (a local or compatible server);
/// credentials from the standard AWS chain (environment, profile, instance role).
pub async fn client(region: &str, endpoint_url: Option<&str>) -> Client {
    client_with(region, endpoint_url, None).await
}

/// Like [`client`], with static credentials (access key id, secret) when given.
pub async fn client_with(
    region: &str,
    endpoint_url: Option<&str>,
    credentials: Option<(&str, &str)>,
) -> Client {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()));
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    if let Some((id, secret)) = credentials {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            id,
            secret,
            None,
            None,
            "malaka-config",
        ));
    }
    Client::new(&loader.load().await)
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// SQS's message id.
    pub id: String,
    /// The handle its deletes and visibility changes use.
    pub receipt: String,
    /// The body.
    pub body: String,
    /// How many times it has been received (1 the first time).
    pub receive_count: u32,
    /// Its FIFO message group (FIFO queues only).
    pub group: Option<String>,
}

/// What to do with a handled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or recorded as not doable): delete it.
    Done,
    /// Deliver it again later (after the consumer's backoff for its receive count).
    Retry,
}

/// Handles messages; runs concurrently, so it must be `Sync`.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    async fn handle(&self, message: &Message) -> Outcome;
}

/// How a queue is consumed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The queue.
    pub queue_url: String,
    /// Concurrent receive loops (default 2).
    pub pollers: usize,
    /// Messages handled at once (default 16).
    pub concurrency: usize,
    /// Long-poll wait per receive (default 20 s, the most SQS allows).
    pub wait: Duration,
    /// Visibility timeout asked for on receive, and renewed while a handler runs (default
    /// 30 s; renewed every third of it).
    pub visibility: Duration,
    /// Delay before a retried message is visible again, by receive count (default 1 s doubling
    /// to 5 minutes, full jitter).
    pub backoff: RetryPolicy,
    /// Name in metrics and logs (default: the queue URL's last segment).
    pub name: String,
}

impl ConsumerConfig {
    /// Defaults for `queue_url`.
    pub fn new(queue_url: impl Into<String>) -> Self {
        let queue_url = queue_url.into();
        let name = queue_url.rsplit('/').next().unwrap_or("sqs").to_owned();
        Self {
            queue_url,
            pollers: 2,
            concurrency: 16,
            wait: Duration::from_secs(20),
            visibility: Duration::from_secs(30),
            backoff: RetryPolicy::new(u32::MAX)
                .initial_delay(Duration::from_secs(1))
                .max_delay(Duration::from_secs(300)),
            name,
        }
    }
    /// Sets the pollers.
    #[must_use]
    pub fn pollers(mut self, n: usize) -> Self {
        self.pollers = n.max(1);
        self
    }
    /// Sets the concurrency.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
    /// Sets the long-poll wait.
    #[must_use]
    pub fn wait(mut self, d: Duration) -> Self {
        self.wait = d;
        self
    }
    /// Sets the visibility timeout.
    #[must_use]
    pub fn visibility(mut self, d: Duration) -> Self {
        self.visibility = d.max(Duration::from_secs(1));
        self
    }
    /// Sets the retry backoff.
    #[must_use]
    pub fn backoff(mut self, p: RetryPolicy) -> Self {
        self.backoff = p;
        self
    }
}

/// Counters of one consumer.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Messages received.
    pub received: AtomicU64,
    /// Handled successfully (their deletes are then queued for the deleter).
    pub done: AtomicU64,
    /// Deletes the queue acknowledged (a message counts once its `DeleteMessageBatch` entry
    /// succeeded): `done` minus this is what is handled but not yet deleted.
    pub deleted: AtomicU64,
    /// Handed back for a retry.
    pub retried: AtomicU64,
    /// Visibility extensions made while handlers ran.
    pub extended: AtomicU64,
    /// Handed back unhandled (after a retried message of their FIFO group).
    pub released: AtomicU64,
}

/// A running consumer of one queue.
#[derive(Debug)]
pub struct Consumer {
    stop: CancellationToken,
    pollers: Vec<Supervised>,
    pool: WorkerPool,
    deleter: Supervised,
    deleter_stop: CancellationToken,
    deletes: mpsc::Sender<String>,
    stats: Arc<ConsumerStats>,
    name: String,
}

struct Ctx {
    client: Client,
    config: ConsumerConfig,
    /// FIFO groups with messages being handled in this process.
    active_groups: std::sync::Mutex<std::collections::HashSet<String>>,
    handler: Arc<dyn Handler>,
    room: Arc<Semaphore>,
    pool: WorkerPool,
    deletes: mpsc::Sender<String>,
    stats: Arc<ConsumerStats>,
}

fn secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

impl Consumer {
    /// Starts consuming.
    ///
    /// # Errors
    /// The worker pool could not be made.
    pub fn start(
        client: Client,
        config: ConsumerConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<Self, SqsError> {
        Self::start_supervised(client, config, handler, &Supervisor::default())
    }

    /// As [`Self::start`], with the receive loops (`sqs.<name>.poller.<n>`, degraded while
    /// receiving fails) and the deleter (`sqs.<name>.deleter`) under `supervisor`.
    ///
    /// # Errors
    /// The worker pool could not be made.
    pub fn start_supervised(
        client: Client,
        config: ConsumerConfig,
        handler: Arc<dyn Handler>,
        supervisor: &Supervisor,
    ) -> Result<Self, SqsError> {
        let pool = WorkerPool::new(
            PoolConfig::new(format!("sqs:{}", config.name))
                .min_workers(1)
                .max_workers(config.concurrency)
                .queue_size(config.concurrency),
        )?;
        let stop = CancellationToken::new();
        let (deletes, rx) = mpsc::channel(1000);
        let stats = Arc::new(ConsumerStats::default());
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            room: Arc::new(Semaphore::new(config.concurrency)),
            pool: pool.clone(),
            deletes: deletes.clone(),
            stats: Arc::clone(&stats),
            handler,
            config: config.clone(),
            active_groups: std::sync::Mutex::default(),
        });
        let pollers = (0..config.pollers)
            .map(|i| {
                let (ctx, stop) = (Arc::clone(&ctx), stop.clone());
                let spec =
                    TaskSpec::new(format!("sqs.{}.poller.{i}", config.name)).stop_on(stop.clone());
                supervisor.spawn(spec, move |task| poll(Arc::clone(&ctx), stop.clone(), task))
            })
            .collect();
        let deleter_stop = CancellationToken::new();
        let deleter = {
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let (url, name) = (config.queue_url.clone(), config.name.clone());
            let stats = Arc::clone(&stats);
            let spec =
                TaskSpec::new(format!("sqs.{}.deleter", config.name)).stop_on(deleter_stop.clone());
            supervisor.spawn(spec, move |_| {
                let (client, url, name, rx, stats) = (
                    client.clone(),
                    url.clone(),
                    name.clone(),
                    Arc::clone(&rx),
                    Arc::clone(&stats),
                );
                async move {
                    // A restarted deleter takes the same receipts over.
                    let mut rx = rx.lock().await;
                    delete_batches(client, url, name, &stats, &mut rx).await;
                }
            })
        };
        tracing::info!(queue = %config.queue_url, pollers = config.pollers, concurrency = config.concurrency, "SQS consumer started");
        Ok(Self {
            stop,
            pollers,
            pool,
            deleter,
            deleter_stop,
            deletes,
            stats,
            name: config.name,
        })
    }

    /// Its counters.
    pub fn stats(&self) -> &ConsumerStats {
        &self.stats
    }

    /// Its counters, shared: they stay readable after the consumer is moved or shut down.
    pub fn shared_stats(&self) -> Arc<ConsumerStats> {
        Arc::clone(&self.stats)
    }

    /// Its handler pool.
    pub fn pool(&self) -> &WorkerPool {
        &self.pool
    }

    /// Stops receiving, lets running handlers finish within `timeout`, and writes the last
    /// deletes. A message whose handler did not finish is simply received again later.
    pub async fn shutdown(self, timeout: Duration) {
        self.stop.cancel();
        for p in self.pollers {
            let _stopped = p.await;
        }
        let report = self.pool.shutdown_within(timeout).await;
        if report.abandoned > 0 {
            tracing::warn!(queue = %self.name, abandoned = report.abandoned,
                "SQS handlers still running at the shutdown deadline; their messages will be delivered again");
        }
        self.deleter_stop.cancel();
        drop(self.deletes);
        let _flushed = self.deleter.await;
        tracing::info!(queue = %self.name, "SQS consumer stopped");
    }
}

async fn poll(ctx: Arc<Ctx>, stop: CancellationToken, task: TaskContext) {
    let name = ctx.config.name.clone();
    let mut failures = 0u32;
    loop {
        // Room first: never hold messages invisible that nobody can work on.
        let first = tokio::select! {
            () = stop.cancelled() => return,
            p = Arc::clone(&ctx.room).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let mut permits = vec![first];
        while permits.len() < 10 {
            match Arc::clone(&ctx.room).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let receive = ctx
            .client
            .receive_message()
            .queue_url(&ctx.config.queue_url)
            .max_number_of_messages(i32::try_from(permits.len()).unwrap_or(10))
            .wait_time_seconds(secs(ctx.config.wait).min(20))
            .visibility_timeout(secs(ctx.config.visibility))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .send();
        let out = tokio::select! {
            () = stop.cancelled() => return,
            r = receive => r,
        };
        let messages = match out {
            Ok(o) => {
                failures = 0;
                task.healthy();
                o.messages.unwrap_or_default()
            }
            Err(e) => {
                failures += 1;
                task.degraded(format!(
                    "receiving failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                ));
                let wait = Duration::from_millis(200 * u64::from(failures.min(25)));
                tracing::warn!(queue = %name, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), ?wait, "SQS receive failed");
                metrics::counter!("malaka_sqs_receive_errors_total", "queue" => name.clone())
                    .increment(1);
                drop(permits);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        metrics::counter!("malaka_sqs_received_total", "queue" => name.clone())
            .increment(messages.len() as u64);
        ctx.stats
            .received
            .fetch_add(messages.len() as u64, Ordering::Relaxed);
        // Messages of one FIFO group are handled one after another, in order; groups (and the
        // messages of a standard queue, each its own "group") run concurrently.
        let mut groups: Vec<(Option<String>, Vec<Held>)> = Vec::new();
        let mut permits = permits.into_iter();
        for m in messages {
            let (Some(id), Some(receipt)) = (m.message_id, m.receipt_handle) else {
                continue;
            };
            let attr = |a: MessageSystemAttributeName| {
                m.attributes.as_ref().and_then(|x| x.get(&a)).cloned()
            };
            let receive_count = attr(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let group = attr(MessageSystemAttributeName::MessageGroupId);
            let msg = Message {
                id,
                receipt,
                body: m.body.unwrap_or_default(),
                receive_count,
                group,
            };
            let Some(permit) = permits.next() else { break };
            match groups
                .iter_mut()
                .find(|(g, _)| g.is_some() && *g == msg.group)
            {
                Some((_, list)) => list.push((msg, permit)),
                None => groups.push((msg.group.clone(), vec![(msg, permit)])),
            }
        }
        for (group, list) in groups {
            if let Some(g) = &group {
                let fresh = ctx
                    .active_groups
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(g.clone());
                if !fresh {
                    // The group's earlier messages are still being handled here (the queue
                    // handed these out anyway): back they go, to come after those.
                    for (m, permit) in list {
                        release(&ctx, &m).await;
                        drop(permit);
                    }
                    continue;
                }
            }
            let c = Arc::clone(&ctx);
            // Room was taken before receiving, so this never waits long; a closed pool
            // means shutdown, and the messages are simply delivered again later.
            if ctx
                .pool
                .submit(async move { run_group(&c, list).await })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// A received message and the room it holds.
type Held = (Message, tokio::sync::OwnedSemaphorePermit);

/// Runs a group's messages in order. When one is to be retried, the ones after it are handed
/// back to the queue unhandled (visible again at once; a FIFO queue delivers them only after
/// the retried one), so the group's order holds.
async fn run_group(ctx: &Ctx, list: Vec<Held>) {
    /// Frees the group for other receives when the run ends (or is dropped).
    struct Active<'a>(&'a Ctx, Option<String>);
    impl Drop for Active<'_> {
        fn drop(&mut self) {
            if let Some(g) = &self.1 {
                self.0
                    .active_groups
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(g);
            }
        }
    }
    let _active = Active(ctx, list.first().and_then(|(m, _)| m.group.clone()));
    let mut rest = list.into_iter();
    while let Some((msg, permit)) = rest.next() {
        let outcome = run_one(ctx, msg).await;
        drop(permit);
        if outcome == Outcome::Retry {
            for (m, permit) in rest.by_ref() {
                release(ctx, &m).await;
                drop(permit);
            }
        }
    }
}

/// Hands a received message back unhandled: visible again at once.
async fn release(ctx: &Ctx, m: &Message) {
    ctx.stats.released.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("malaka_sqs_released_total", "queue" => ctx.config.name.clone()).increment(1);
    let r = ctx
        .client
        .change_message_visibility()
        .queue_url(&ctx.config.queue_url)
        .receipt_handle(&m.receipt)
        .visibility_timeout(0)
        .send()
        .await;
    if let Err(e) = r {
        tracing::warn!(queue = %ctx.config.name, message = %m.id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
            "handing a message back failed; it comes back at its visibility timeout");
    }
}

/// Runs the handler with a visibility heartbeat, then deletes or backs off; returns what the
/// handler said.
async fn run_one(ctx: &Ctx, msg: Message) -> Outcome {
    let name = ctx.config.name.clone();
    metrics::gauge!("malaka_sqs_in_flight", "queue" => name.clone()).increment(1.0);
    let every = (ctx.config.visibility / 3).max(Duration::from_millis(300));
    let handle = ctx.handler.handle(&msg);
    let mut handle = std::pin::pin!(handle);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let outcome = loop {
        tokio::select! {
            o = &mut handle => break o,
            _ = tick.tick() => {
                let r = ctx.client.change_message_visibility()
                    .queue_url(&ctx.config.queue_url)
                    .receipt_handle(&msg.receipt)
                    .visibility_timeout(secs(ctx.config.visibility))
                    .send().await;
                match r {
                    Ok(_) => {
                        ctx.stats.extended.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("malaka_sqs_visibility_extensions_total", "queue" => name.clone()).increment(1);
                    }
                    Err(e) => tracing::warn!(queue = %name, message = %msg.id,
                        error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "extending a message's visibility failed"),
                }
            }
        }
    };
    metrics::gauge!("malaka_sqs_in_flight", "queue" => name.clone()).decrement(1.0);
    match outcome {
        Outcome::Done => {
            ctx.stats.done.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("malaka_sqs_processed_total", "queue" => name.clone()).increment(1);
            // Waits for room: a delete is never skipped.
            if ctx.deletes.send(msg.receipt.clone()).await.is_err() {
                tracing::warn!(queue = %name, message = %msg.id, "deleter gone; the message will be delivered again");
            }
        }
        Outcome::Retry => {
            ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("malaka_sqs_failed_total", "queue" => name.clone()).increment(1);
            let delay = ctx.config.backoff.backoff(msg.receive_count.max(1));
            let r = ctx
                .client
                .change_message_visibility()
                .queue_url(&ctx.config.queue_url)
                .receipt_handle(&msg.receipt)
                .visibility_timeout(secs(delay).clamp(0, 43_200))
                .send()
                .await;
            if let Err(e) = r {
                tracing::warn!(queue = %name, message = %msg.id, error = %aws_sdk_sqs::error::DisplayErrorContext(&e),
                    "backing off a message failed; it comes back at its visibility timeout");
            }
        }
    }
    outcome
}

/// Deletes handled messages, ten per call: whatever arrived while the last call ran.
async fn delete_batches(
    client: Client,
    queue_url: String,
    name: String,
    stats: &ConsumerStats,
    rx: &mut mpsc::Receiver<String>,
) {
    let mut batch: Vec<String> = Vec::with_capacity(10);
    loop {
        let Some(first) = rx.recv().await else { return };
        batch.push(first);
        while batch.len() < 10 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let entries: Vec<DeleteMessageBatchRequestEntry> = batch
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(r)
                    .build()
                    .ok()
            })
            .collect();
        match client
            .delete_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(o) => {
                stats
                    .deleted
                    .fetch_add(o.successful.len() as u64, Ordering::Relaxed);
                if !o.failed.is_empty() {
                    tracing::warn!(queue = %name, failed = o.failed.len(), "some deletes failed; those messages will be delivered again");
                    metrics::counter!("malaka_sqs_delete_errors_total", "queue" => name.clone())
                        .increment(o.failed.len() as u64);
                }
            }
            Err(e) => {
                tracing::warn!(queue = %name, error = %aws_sdk_sqs::error::DisplayErrorContext(&e), "deleting messages failed; they will be delivered again");
                metrics::counter!("malaka_sqs_delete_errors_total", "queue" => name.clone())
                    .increment(batch.len() as u64);
            }
        }
        batch.clear();
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Its id: the deduplication id on a FIFO queue.
    pub id: String,
    /// Its ordering group on a FIFO queue (messages of one group arrive in order).
    pub group: String,
    /// The body.
    pub body: String,
}

/// Sends messages to one queue in batches of ten.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    queue_url: String,
    fifo: bool,
}

impl Publisher {
    /// A publisher to `queue_url` (a `.fifo` queue gets group and deduplication ids).
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        let queue_url = queue_url.into();
        Self {
            fifo: queue_url.ends_with(".fifo"),
            client,
            queue_url,
        }
    }

    /// Sends `messages` in order, ten per call.
    ///
    /// # Errors
    /// A call failed or refused some entries; the caller sends the same messages again
    /// (a FIFO queue drops the duplicates by id).
    pub async fn send(&self, messages: &[Outgoing]) -> Result<(), SqsError> {
        for chunk in messages.chunks(10) {
            let entries: Vec<SendMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    let mut e = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(&m.body);
                    if self.fifo {
                        e = e.message_group_id(&m.group).message_deduplication_id(&m.id);
                    }
                    e.build().ok()
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    call_err(
                        "SendMessageBatch",
                        aws_sdk_sqs::error::DisplayErrorContext(&e),
                    )
                })?;
            if let Some(f) = out.failed.first() {
                return Err(SqsError::Partial {
                    failed: out.failed.len(),
                    total: chunk.len(),
                    first: f.message.clone().unwrap_or_else(|| f.code.clone()),
                });
            }
        }
        Ok(())
    }
}

/// Helpers for tests and tools: create a queue (with a dead-letter queue after
/// `max_receives`), and read a queue's approximate counts.
pub mod admin {
    use super::{Client, HashMap, SqsError, call_err};
    use aws_sdk_sqs::types::QueueAttributeName;

    /// Creates queue `name` (FIFO if it ends in `.fifo`), with a redrive policy to `dlq_arn`
    /// after `max_receives` when given; its URL.
    ///
    /// # Errors
    /// The call failed.
    pub async fn create(
        client: &Client,
        name: &str,
        visibility_secs: u32,
        redrive: Option<(&str, u32)>,
    ) -> Result<String, SqsError> {
        let mut attrs = HashMap::new();
        attrs.insert(
            QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        );
        if name.ends_with(".fifo") {
            attrs.insert(QueueAttributeName::FifoQueue, "true".to_owned());
        }
        if let Some((arn, max)) = redrive {
            attrs.insert(
                QueueAttributeName::RedrivePolicy,
                format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{max}"}}"#),
            );
        }
        let out = client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attrs))
            .send()
            .await
            .map_err(|e| call_err("CreateQueue", aws_sdk_sqs::error::DisplayErrorContext(&e)))?;
        out.queue_url
            .ok_or_else(|| call_err("CreateQueue", "no queue URL"))
    }

    /// The ARN of the queue at `url`.
    ///
    /// # Errors
    /// The call failed.
    pub async fn arn(client: &Client, url: &str) -> Result<String, SqsError> {
        let out = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| {
                call_err(
                    "GetQueueAttributes",
                    aws_sdk_sqs::error::DisplayErrorContext(&e),
                )
            })?;
        out.attributes
            .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
            .ok_or_else(|| call_err("GetQueueAttributes", "no ARN"))
    }

    /// The `maxReceiveCount` of the queue's redrive policy, if it has one: after that many
    /// receives the queue moves a message to its dead-letter queue.
    ///
    /// # Errors
    /// The call failed.
    pub async fn max_receive_count(client: &Client, url: &str) -> Result<Option<u32>, SqsError> {
        let out = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| {
                call_err(
                    "GetQueueAttributes",
                    aws_sdk_sqs::error::DisplayErrorContext(&e),
                )
            })?;
        let Some(policy) = out
            .attributes
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy).cloned())
        else {
            return Ok(None);
        };
        let v: serde_json::Value = serde_json::from_str(&policy)
            .map_err(|e| call_err("GetQueueAttributes", format!("RedrivePolicy: {e}")))?;
        // SQS gives it as a number or as a string.
        Ok(match &v["maxReceiveCount"] {
            serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        })
    }

    /// Approximate (visible, in flight) message counts of the queue at `url`.
    ///
    /// # Errors
    /// The call failed.
    pub async fn counts(client: &Client, url: &str) -> Result<(u64, u64), SqsError> {
        let out = client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| {
                call_err(
                    "GetQueueAttributes",
                    aws_sdk_sqs::error::DisplayErrorContext(&e),
                )
            })?;
        let a = out.attributes.unwrap_or_default();
        let n = |k: &QueueAttributeName| a.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok((
            n(&QueueAttributeName::ApproximateNumberOfMessages),
            n(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}
