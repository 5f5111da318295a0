//! Per-client limits on failures: requests that fail authentication (and, later, sign-in
//! attempts) are counted per client address, and a client past its allowance is refused before
//! any hashing or database work is done for it.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Blocked clients kept before expired entries are swept on the next failure.
const SWEEP_AT: usize = 10_000;

/// Counts failures per client address (an IPv6 client by its /64, since one host holds a whole
/// prefix) with a GCRA allowance (`governor`): `per_minute` sustained, `burst` at once. A client
/// that uses its allowance up is blocked until the allowance has one failure again: [`check`]
/// refuses it, cheaply, before the request costs anything.
///
/// ```
/// use malaka_server::limit::ClientLimiter;
/// let limiter = ClientLimiter::new("auth", 60, 2);
/// let client = Some("192.0.2.7".parse().unwrap());
/// assert!(limiter.check(client).is_ok());
/// limiter.failed(client);
/// limiter.failed(client);
/// limiter.failed(client); // over the burst: blocked
/// assert!(limiter.check(client).is_err());
/// assert!(limiter.check(Some("192.0.2.8".parse().unwrap())).is_ok());
/// ```
///
/// [`check`]: ClientLimiter::check
pub struct ClientLimiter {
    name: &'static str,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    failures: AtomicU64,
}

impl fmt::Debug for ClientLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientLimiter")
            .field("name", &self.name)
            .field("blocked", &self.blocked_count())
            .finish_non_exhaustive()
    }
}

/// The key of a client: an IPv4 address, or an IPv6 address's /64 (an IPv4-mapped IPv6
/// address is its IPv4 address); `None` (no socket address known, as in-process tests) is one
/// client.
fn key(client: Option<IpAddr>) -> IpAddr {
    match client {
        None => IpAddr::from([0, 0, 0, 0]),
        Some(IpAddr::V4(a)) => IpAddr::V4(a),
        Some(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = a.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ClientLimiter {
    /// A limiter named `name` (the `limiter` label of its metrics) allowing `per_minute`
    /// failures per client, sustained, and `burst` at once (each at least 1).
    pub fn new(name: &'static str, per_minute: u32, burst: u32) -> Self {
        let rate = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_minute(rate).allow_burst(burst);
        Self {
            name,
            limiter: RateLimiter::keyed(quota),
            blocked: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
        }
    }

    /// Whether `client` may be served: `Err(wait)` while it is blocked, counted in
    /// `malaka_client_limited_total{limiter}`. Does no I/O.
    ///
    /// # Errors
    /// How long until the client may try again.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let k = key(client);
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let Some(until) = blocked.get(&k).copied() else {
            return Ok(());
        };
        let now = Instant::now();
        if until <= now {
            blocked.remove(&k);
            return Ok(());
        }
        drop(blocked);
        metrics::counter!("malaka_client_limited_total", "limiter" => self.name).increment(1);
        Err(until - now)
    }

    /// Counts one failure of `client` (`malaka_client_failures_total{limiter}`); when that uses
    /// up its allowance, the client is blocked (and a warning says so, once per block).
    pub fn failed(&self, client: Option<IpAddr>) {
        let k = key(client);
        metrics::counter!("malaka_client_failures_total", "limiter" => self.name).increment(1);
        let n = self.failures.fetch_add(1, Ordering::Relaxed);
        if let Err(not_until) = self.limiter.check_key(&k) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            let fresh = blocked.insert(k, Instant::now() + wait).is_none();
            drop(blocked);
            if fresh {
                tracing::warn!(limiter = self.name, client = %k, retry_after = ?wait,
                    "too many failed requests from one client: refusing it for a while");
            }
        }
        if n % 1024 == 1023 || self.blocked_count() > SWEEP_AT {
            self.sweep();
        }
    }

    /// Clients blocked now (or until the next sweep).
    pub fn blocked_count(&self) -> usize {
        self.blocked.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Forgets clients whose block has ended and whose allowance is whole again.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.blocked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, until| *until > now);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn failures_past_the_burst_block_that_client_only() {
        let l = ClientLimiter::new("test", 60, 3);
        for _ in 0..3 {
            assert!(l.check(ip("203.0.113.1")).is_ok());
            l.failed(ip("203.0.113.1"));
        }
        assert!(
            l.check(ip("203.0.113.1")).is_ok(),
            "three failures are the burst"
        );
        l.failed(ip("203.0.113.1"));
        let wait = l.check(ip("203.0.113.1")).unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1));
        assert!(l.check(ip("203.0.113.2")).is_ok());
        assert!(l.check(None).is_ok());
    }

    #[test]
    fn an_ipv6_host_is_its_64_prefix() {
        let l = ClientLimiter::new("test", 1, 1);
        l.failed(ip("2001:db8:1:2::1"));
        l.failed(ip("2001:db8:1:2:ffff::9"));
        assert!(l.check(ip("2001:db8:1:2::77")).is_err());
        assert!(l.check(ip("2001:db8:1:3::1")).is_ok());
        l.failed(ip("::ffff:198.51.100.4"));
        l.failed(ip("198.51.100.4"));
        assert!(l.check(ip("198.51.100.4")).is_err());
    }

    #[test]
    fn a_block_ends() {
        let l = ClientLimiter::new("test", 6000, 1);
        l.failed(ip("192.0.2.1"));
        l.failed(ip("192.0.2.1"));
        assert!(l.check(ip("192.0.2.1")).is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(l.check(ip("192.0.2.1")).is_ok());
        l.sweep();
        assert_eq!(l.blocked_count(), 0);
    }
}
