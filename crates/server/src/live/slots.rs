//! WebSocket connection slots: at most `live.ws_max_per_token` connections per token and
//! `live.ws_max_connections` per node; a connection holds its slot until it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Why a connection got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The token holds its most connections.
    PerToken(usize),
    /// The node holds its most connections.
    PerNode(usize),
}

impl Refusal {
    /// The `reason` label of `malaka_ws_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerToken(_) => "per_token",
            Self::PerNode(_) => "per_node",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_token: HashMap<i64, usize>,
}

/// The node's connection counts.
#[derive(Debug, Clone)]
pub struct Slots {
    counts: Arc<Mutex<Counts>>,
    per_token: usize,
    per_node: usize,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    token: i64,
}

impl Slots {
    /// Slots for at most `per_token` connections per token and `per_node` in all.
    pub fn new(per_token: usize, per_node: usize) -> Self {
        Self {
            counts: Arc::default(),
            per_token,
            per_node,
        }
    }

    /// A slot for a connection of `token`, or why there is none (counted in
    /// `malaka_ws_refused_total{reason}`).
    ///
    /// # Errors
    /// The token's or the node's limit is reached.
    pub fn acquire(&self, token: i64) -> Result<Slot, Refusal> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = c.by_token.get(&token).copied().unwrap_or(0);
        let refusal = if c.total >= self.per_node {
            Some(Refusal::PerNode(self.per_node))
        } else if mine >= self.per_token {
            Some(Refusal::PerToken(self.per_token))
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(c);
            metrics::counter!("malaka_ws_refused_total", "reason" => r.as_str()).increment(1);
            return Err(r);
        }
        c.total += 1;
        c.by_token.insert(token, mine + 1);
        Ok(Slot {
            counts: Arc::clone(&self.counts),
            token,
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_token.get_mut(&self.token) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_token.remove(&self.token);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_limited_per_token_and_per_node_and_given_back() {
        let s = Slots::new(2, 3);
        let a1 = s.acquire(1).unwrap();
        let _a2 = s.acquire(1).unwrap();
        assert_eq!(s.acquire(1).unwrap_err(), Refusal::PerToken(2));
        let _b1 = s.acquire(2).unwrap();
        assert_eq!(s.acquire(3).unwrap_err(), Refusal::PerNode(3));
        drop(a1);
        assert_eq!(s.held(), 2);
        let _c = s.acquire(3).unwrap();
        assert_eq!(s.acquire(1).unwrap_err(), Refusal::PerNode(3));
    }
}
