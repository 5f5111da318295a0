//! The write turn of an SQLite database file in this process. SQLite lets one connection write
//! at a time; a writer that finds the lock taken waits in SQLite's busy handler, which sleeps
//! 1, 2, 5, 10, ... up to 100 ms between tries and wakes no sooner when the lock is let go. While
//! postings keep the group committer committing back to back, such a writer rarely finds a gap,
//! and a one-row update (the relay marking events published, an alert, a listener's cursor) can
//! wait for seconds. Writers that first take their turn here queue in order (a fair lock, one
//! per file, shared by every pool on it) and find the lock free when their turn comes, after at
//! most the writes queued before them. Writers in other processes still meet in the busy
//! handler.
//!
//! A turn is taken before a connection is acquired and held until the transaction ends; whoever
//! holds one never waits for another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use sqlx::sqlite::SqlitePool;

type Lock = tokio::sync::Mutex<()>;

/// The gates of the files open in this process.
static GATES: LazyLock<Mutex<HashMap<PathBuf, Weak<Lock>>>> = LazyLock::new(Mutex::default);

/// The write gate of one SQLite file. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WriteGate(Arc<Lock>);

/// A writer's turn: the next writer of the file goes when it is dropped.
pub type WriteTurn = tokio::sync::OwnedMutexGuard<()>;

impl WriteGate {
    /// The gate of the file `pool` writes to: the same for every pool on that file (as named in
    /// the pool's options).
    pub fn of(pool: &SqlitePool) -> Self {
        let file = pool.connect_options().get_filename().to_path_buf();
        let mut gates = GATES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = gates.get(&file).and_then(Weak::upgrade) {
            return Self(gate);
        }
        gates.retain(|_, g| g.strong_count() > 0);
        let gate = Arc::new(Lock::new(()));
        gates.insert(file, Arc::downgrade(&gate));
        Self(gate)
    }

    /// Waits for this writer's turn (first come, first served).
    pub async fn turn(&self) -> WriteTurn {
        Arc::clone(&self.0).lock_owned().await
    }
}

/// The turn to write to `pool`'s file.
pub async fn sqlite_turn(pool: &SqlitePool) -> WriteTurn {
    WriteGate::of(pool).turn().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(url: &str) -> SqlitePool {
        sqlx::sqlite::SqlitePoolOptions::new()
            .connect_lazy(url)
            .unwrap()
    }

    #[tokio::test]
    async fn pools_on_one_file_share_a_gate() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let (a, b) = (pool(&url), pool(&url));
        let other = pool(&format!("sqlite://{}", dir.path().join("b.db").display()));
        let turn = WriteGate::of(&a).turn().await;
        assert!(
            WriteGate::of(&b).0.try_lock().is_err(),
            "same file, same gate"
        );
        assert!(WriteGate::of(&other).0.try_lock().is_ok());
        drop(turn);
        assert!(WriteGate::of(&b).0.try_lock().is_ok());
    }
}
