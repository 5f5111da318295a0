//! Shutdown coordination: a tree of cancellation tokens (cancelling a parent cancels its
//! children) with a tracker of the tasks that must finish before the process exits.

use std::future::Future;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One node of the shutdown tree.
///
/// ```
/// use std::time::Duration;
/// use malaka_runtime::Shutdown;
///
/// # #[tokio::main] async fn main() {
/// let root = Shutdown::new();
/// let http = root.child();
/// let worker = http.clone();
/// http.spawn(async move {
///     worker.cancelled().await; // stop taking work, finish what is in hand
/// });
/// root.trigger();
/// assert!(http.is_triggered());
/// assert!(root.wait(Duration::from_secs(1)).await, "every tracked task finished in time");
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A root.
    pub fn new() -> Self {
        Self::default()
    }

    /// A child: triggered when this one is, or on its own without touching the parent. Tasks it
    /// spawns are tracked by the same tracker, so the root's [`Self::wait`] waits for them too.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: self.tracker.clone(),
        }
    }

    /// Starts shutdown for this node and its children.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started for this node.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown starts for this node.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// The underlying token, for APIs that take one.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns a task that [`Self::wait`] waits for.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Tracked tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }

    /// Waits up to `timeout` for every tracked task to finish; true if they all did. Tasks spawned
    /// later are still tracked.
    pub async fn wait(&self, timeout: Duration) -> bool {
        self.tracker.close();
        let done = tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok();
        self.tracker.reopen();
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn children_follow_parents_not_the_other_way() {
        let root = Shutdown::new();
        let a = root.child();
        let a1 = a.child();
        let b = root.child();
        a.trigger();
        assert!(a1.is_triggered());
        assert!(!b.is_triggered());
        assert!(!root.is_triggered());
        root.trigger();
        assert!(b.is_triggered());
    }

    #[tokio::test(start_paused = true)]
    async fn wait_reports_stragglers() {
        let root = Shutdown::new();
        root.child().spawn(async {
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        assert_eq!(root.running(), 1);
        assert!(!root.wait(Duration::from_secs(1)).await);
        assert!(root.wait(Duration::from_secs(60)).await);
    }
}
