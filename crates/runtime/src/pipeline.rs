//! Bounded pipelines: a source and stages joined by bounded channels, so the slowest stage sets
//! the pace all the way back to the source; the first error (or panic) stops every stage and is
//! returned.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::panic_message;

/// Why a pipeline stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PipelineError<E> {
    /// A stage (or the source, named `source`, or the sink, named `sink`) returned an error.
    #[error("stage `{stage}` failed: {error}")]
    Stage {
        /// The stage's name.
        stage: String,
        /// Its error.
        error: E,
    },
    /// A stage panicked.
    #[error("stage `{stage}` panicked: {message}")]
    Panicked {
        /// The stage's name.
        stage: String,
        /// The panic message.
        message: String,
    },
}

struct Shared<E> {
    cancel: CancellationToken,
    first_error: Mutex<Option<PipelineError<E>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<E> Shared<E> {
    fn fail(&self, error: PipelineError<E>) {
        let mut slot = self
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(error);
        }
        drop(slot);
        self.cancel.cancel();
    }

    fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(fut);
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(handle);
    }
}

type Start<T, E> = Box<dyn FnOnce(&Arc<Shared<E>>) -> mpsc::Receiver<T> + Send>;

/// A pipeline under construction; nothing runs until [`Pipeline::for_each`] or
/// [`Pipeline::collect`].
///
/// ```
/// use malaka_runtime::Pipeline;
///
/// # #[tokio::main] async fn main() {
/// // Parse, then price, with at most 4 lookups in flight; 16 items buffered between stages.
/// let total = Pipeline::<_, String>::from_iter(vec!["1", "2", "3"], 16)
///     .stage("parse", 1, 16, |s: &str| async move { s.parse::<u32>().map_err(|e| e.to_string()) })
///     .stage("price", 4, 16, |n| async move { Ok(n * 10) })
///     .collect()
///     .await
///     .unwrap();
/// assert_eq!(total, vec![10, 20, 30]);
///
/// let err = Pipeline::<_, String>::from_iter(vec!["1", "x"], 16)
///     .stage("parse", 1, 16, |s: &str| async move { s.parse::<u32>().map_err(|e| e.to_string()) })
///     .collect()
///     .await
///     .unwrap_err();
/// assert!(err.to_string().starts_with("stage `parse` failed"));
/// # }
/// ```
pub struct Pipeline<T, E> {
    start: Start<T, E>,
}

impl<T, E> std::fmt::Debug for Pipeline<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl<T: Send + 'static, E: Send + 'static> Pipeline<T, E> {
    /// A source that yields every item of `iter`, through a channel of `buffer` items.
    pub fn from_iter<I>(iter: I, buffer: usize) -> Self
    where
        I: IntoIterator<Item = T> + Send + 'static,
        I::IntoIter: Send,
    {
        Self::from_stream(futures::stream::iter(iter.into_iter().map(Ok)), buffer)
    }

    /// A source that yields the stream's items; an `Err` stops the pipeline as stage `source`.
    pub fn from_stream<S>(stream: S, buffer: usize) -> Self
    where
        S: Stream<Item = Result<T, E>> + Send + 'static,
    {
        Self {
            start: Box::new(move |shared| {
                let (tx, rx) = mpsc::channel(buffer.max(1));
                let sh = Arc::clone(shared);
                shared.spawn(async move {
                    let cancel = sh.cancel.clone();
                    let run = AssertUnwindSafe(async {
                        futures::pin_mut!(stream);
                        loop {
                            let next = tokio::select! {
                                () = cancel.cancelled() => break,
                                next = stream.next() => next,
                            };
                            match next {
                                None => break,
                                Some(Ok(item)) => {
                                    if tx.send(item).await.is_err() {
                                        break; // downstream stopped
                                    }
                                }
                                Some(Err(error)) => {
                                    sh.fail(PipelineError::Stage {
                                        stage: "source".into(),
                                        error,
                                    });
                                    break;
                                }
                            }
                        }
                    });
                    if let Err(p) = run.catch_unwind().await {
                        sh.fail(PipelineError::Panicked {
                            stage: "source".into(),
                            message: panic_message(p.as_ref()),
                        });
                    }
                });
                rx
            }),
        }
    }

    /// Adds a stage that runs `f` on each item with up to `concurrency` calls in flight, keeping
    /// order, and passes results on through a channel of `buffer` items.
    pub fn stage<U, F, Fut>(
        self,
        name: &str,
        concurrency: usize,
        buffer: usize,
        f: F,
    ) -> Pipeline<U, E>
    where
        U: Send + 'static,
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<U, E>> + Send + 'static,
    {
        let name = name.to_owned();
        let prev = self.start;
        Pipeline {
            start: Box::new(move |shared| {
                let input = prev(shared);
                let (tx, rx) = mpsc::channel(buffer.max(1));
                let sh = Arc::clone(shared);
                shared.spawn(async move {
                    let cancel = sh.cancel.clone();
                    let results = receiver_stream(input)
                        .map(|item| AssertUnwindSafe(f(item)).catch_unwind())
                        .buffered(concurrency.max(1));
                    futures::pin_mut!(results);
                    loop {
                        let next = tokio::select! {
                            () = cancel.cancelled() => break,
                            next = results.next() => next,
                        };
                        match next {
                            None => break,
                            Some(Ok(Ok(out))) => {
                                if tx.send(out).await.is_err() {
                                    break;
                                }
                            }
                            Some(Ok(Err(error))) => {
                                sh.fail(PipelineError::Stage {
                                    stage: name.clone(),
                                    error,
                                });
                                break;
                            }
                            Some(Err(p)) => {
                                sh.fail(PipelineError::Panicked {
                                    stage: name.clone(),
                                    message: panic_message(p.as_ref()),
                                });
                                break;
                            }
                        }
                    }
                });
                rx
            }),
        }
    }

    /// Runs the pipeline, handing each output to `sink` in order; returns how many items the
    /// sink took, or the first error.
    ///
    /// # Errors
    /// The first stage error or panic, or the sink's own error (as stage `sink`).
    pub async fn for_each<F, Fut>(self, mut sink: F) -> Result<u64, PipelineError<E>>
    where
        F: FnMut(T) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let shared = Arc::new(Shared {
            cancel: CancellationToken::new(),
            first_error: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        });
        let mut rx = (self.start)(&shared);
        let mut count = 0u64;
        loop {
            let item = tokio::select! {
                () = shared.cancel.cancelled() => break,
                item = rx.recv() => item,
            };
            let Some(item) = item else { break };
            match AssertUnwindSafe(sink(item)).catch_unwind().await {
                Ok(Ok(())) => count += 1,
                Ok(Err(error)) => {
                    shared.fail(PipelineError::Stage {
                        stage: "sink".into(),
                        error,
                    });
                    break;
                }
                Err(p) => {
                    shared.fail(PipelineError::Panicked {
                        stage: "sink".into(),
                        message: panic_message(p.as_ref()),
                    });
                    break;
                }
            }
        }
        drop(rx);
        let tasks = std::mem::take(
            &mut *shared
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for t in tasks {
            if let Err(e) = t.await
                && e.is_panic()
            {
                shared.fail(PipelineError::Panicked {
                    stage: "stage".into(),
                    message: panic_message(e.into_panic().as_ref()),
                });
            }
        }
        let first = shared
            .first_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match first {
            Some(e) => Err(e),
            None => Ok(count),
        }
    }

    /// Runs the pipeline and collects its outputs.
    ///
    /// # Errors
    /// The first stage error or panic.
    pub async fn collect(self) -> Result<Vec<T>, PipelineError<E>> {
        let mut out = Vec::new();
        self.for_each(|item| {
            out.push(item);
            async { Ok(()) }
        })
        .await?;
        Ok(out)
    }
}

fn receiver_stream<T>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn backpressure_bounds_what_the_source_runs_ahead() {
        let produced = Arc::new(AtomicUsize::new(0));
        let p = produced.clone();
        let source = futures::stream::iter(0..1000u32).map(move |i| {
            p.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(i)
        });
        let consumed = Arc::new(AtomicUsize::new(0));
        let c = consumed.clone();
        let pr = produced.clone();
        let n = Pipeline::from_stream(source, 4)
            .stage("double", 2, 4, |i| async move { Ok(i * 2) })
            .for_each(move |_| {
                let c = c.clone();
                let pr = pr.clone();
                async move {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                    let done = c.fetch_add(1, Ordering::SeqCst) + 1;
                    // The source can only be ahead by the buffers and in-flight items.
                    let ahead = pr.load(Ordering::SeqCst) - done;
                    assert!(ahead <= 4 + 2 + 4 + 2, "source ran {ahead} ahead");
                    Ok(())
                }
            })
            .await
            .unwrap();
        assert_eq!(n, 1000);
    }

    #[tokio::test]
    async fn first_error_stops_everything_and_is_returned() {
        let seen = Arc::new(AtomicUsize::new(0));
        let s = seen.clone();
        let err = Pipeline::<u32, String>::from_iter(0..1_000_000, 8)
            .stage("check", 1, 8, |i| async move {
                if i == 10 {
                    Err(format!("bad {i}"))
                } else {
                    Ok(i)
                }
            })
            .for_each(move |_| {
                s.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .await
            .unwrap_err();
        assert_eq!(
            err,
            PipelineError::Stage {
                stage: "check".into(),
                error: "bad 10".into()
            }
        );
        assert!(seen.load(Ordering::SeqCst) <= 10);
    }

    #[tokio::test]
    async fn panics_and_sink_errors_are_reported() {
        let err = Pipeline::<u32, ()>::from_iter(0..10, 2)
            .stage("explode", 1, 2, |i| async move {
                assert!(i < 3, "too big");
                Ok(i)
            })
            .collect()
            .await
            .unwrap_err();
        assert_eq!(
            err,
            PipelineError::Panicked {
                stage: "explode".into(),
                message: "too big".into()
            }
        );
        let err = Pipeline::<u32, &str>::from_iter(0..10, 2)
            .for_each(|i| async move { if i == 5 { Err("full") } else { Ok(()) } })
            .await
            .unwrap_err();
        assert_eq!(
            err,
            PipelineError::Stage {
                stage: "sink".into(),
                error: "full"
            }
        );
    }
}
