//! `parallel` and `batch`: run many tasks across the runtime's threads with bounded concurrency,
//! returning every outcome in input order.

use std::future::Future;

use futures::StreamExt;
use tokio::task::JoinHandle;

use crate::error::{Error, panic_message};

/// Aborts the task if the caller stops waiting, so dropping `parallel` leaves nothing running.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| {
            r.map_err(|e| match e.try_into_panic() {
                Ok(payload) => Error::Panicked {
                    message: panic_message(payload.as_ref()),
                },
                Err(_) => Error::Abandoned,
            })
        })
    }
}

/// Runs `f` on every item as its own tokio task, at most `limit` at once, and returns every
/// outcome in input order. A panicking task yields [`Error::Panicked`] in its slot and leaves the
/// others alone. Dropping the returned future aborts the tasks still running.
///
/// ```
/// # #[tokio::main] async fn main() {
/// let squares = malaka_runtime::parallel(1..=5u64, 2, |n| async move { n * n }).await;
/// let squares: Vec<u64> = squares.into_iter().map(Result::unwrap).collect();
/// assert_eq!(squares, vec![1, 4, 9, 16, 25]);
/// # }
/// ```
pub async fn parallel<I, F, Fut>(
    items: I,
    limit: usize,
    mut f: F,
) -> Vec<Result<Fut::Output, Error>>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    futures::stream::iter(items)
        .map(|item| AbortOnDrop(tokio::spawn(f(item))))
        .buffered(limit.max(1))
        .collect()
        .await
}

/// Splits `items` into chunks of `chunk_size` and runs `f` on each chunk with at most `limit`
/// chunks at once; returns one outcome per chunk, in order.
///
/// ```
/// # #[tokio::main] async fn main() {
/// let sums = malaka_runtime::batch((1..=10).collect::<Vec<u32>>(), 4, 2, |chunk| async move {
///     chunk.iter().sum::<u32>()
/// }).await;
/// let sums: Vec<u32> = sums.into_iter().map(Result::unwrap).collect();
/// assert_eq!(sums, vec![10, 26, 19]);
/// # }
/// ```
pub async fn batch<T, F, Fut>(
    items: Vec<T>,
    chunk_size: usize,
    limit: usize,
    f: F,
) -> Vec<Result<Fut::Output, Error>>
where
    F: FnMut(Vec<T>) -> Fut,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let chunk_size = chunk_size.max(1);
    let mut chunks = Vec::with_capacity(items.len().div_ceil(chunk_size));
    let mut iter = items.into_iter().peekable();
    while iter.peek().is_some() {
        chunks.push(iter.by_ref().take(chunk_size).collect::<Vec<T>>());
    }
    parallel(chunks, limit, f).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bounded_and_ordered_with_panics_isolated() {
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let out = parallel(0..40u32, 3, |i| {
            let running = running.clone();
            let peak = peak.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(u64::from(40 - i) % 5)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                assert!(i != 7, "seven");
                i * 2
            }
        })
        .await;
        assert_eq!(out.len(), 40);
        for (i, r) in out.iter().enumerate() {
            if i == 7 {
                assert!(matches!(r, Err(Error::Panicked { message }) if message == "seven"));
            } else {
                assert_eq!(r.as_ref().unwrap(), &(i as u32 * 2));
            }
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert!(peak.load(Ordering::SeqCst) >= 2, "ran concurrently");
    }

    #[tokio::test]
    async fn batch_covers_every_item_once() {
        let out = batch((0..103).collect::<Vec<u32>>(), 10, 4, |c| async move { c }).await;
        assert_eq!(out.len(), 11);
        let all: Vec<u32> = out.into_iter().flat_map(Result::unwrap).collect();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert!(
            batch(Vec::<u8>::new(), 3, 2, |c| async move { c })
                .await
                .is_empty()
        );
    }
}
