//! Failed console sign-ins, throttled per client address: the first few are free, then each
//! failure blocks that address for twice as long as the last, up to a minute. A real
//! operator behind the same address waits at most that minute; a guesser gets about one try
//! a minute. IPv6 addresses count by their /64, which one host usually holds whole.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures an address may have before it is blocked.
pub(super) const FREE_FAILURES: u32 = 5;
/// The longest block.
pub(super) const MAX_BLOCK: Duration = Duration::from_secs(60);
/// An address's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked at most; past it the stalest are forgotten first.
const MAX_TRACKED: usize = 10_000;

struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Instant,
}

#[derive(Default)]
pub(super) struct SignInThrottle {
    by_client: Mutex<HashMap<IpAddr, Failures>>,
}

/// The address failures are counted under.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
        v4 => v4,
    }
}

impl SignInThrottle {
    /// `Err(wait)` while `ip` is blocked.
    pub(super) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let by_client = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
        match by_client.get(&client_key(ip)) {
            Some(f) if f.blocked_until > now => Err(f.blocked_until - now),
            _ => Ok(()),
        }
    }

    /// Counts a failed sign-in from `ip`; how long it is blocked now (zero while free).
    pub(super) fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut by_client = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
        if by_client.len() >= MAX_TRACKED {
            by_client.retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            while by_client.len() >= MAX_TRACKED {
                let Some(stalest) = by_client.iter().min_by_key(|(_, f)| f.last).map(|(k, _)| *k) else {
                    break;
                };
                by_client.remove(&stalest);
            }
        }
        let entry = by_client.entry(client_key(ip)).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: now,
        });
        if now.duration_since(entry.last) >= FORGET_AFTER {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
        if entry.count <= FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (entry.count - FREE_FAILURES - 1).min(6);
        let block = Duration::from_secs(1u64 << doublings).min(MAX_BLOCK);
        entry.blocked_until = now + block;
        block
    }

    /// A successful sign-in from `ip` clears its failures.
    pub(super) fn succeeded(&self, ip: IpAddr) {
        self.by_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&client_key(ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_double_up_to_a_minute_and_clear_on_success() {
        let throttle = SignInThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.failed(ip, now), Duration::ZERO);
        }
        assert_eq!(throttle.check(ip, now), Ok(()));
        let blocks: Vec<u64> = (0..9).map(|_| throttle.failed(ip, now).as_secs()).collect();
        assert_eq!(blocks, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert!(throttle.check(ip, now).is_err());
        assert_eq!(throttle.check(other, now), Ok(()), "other addresses are not affected");
        assert_eq!(
            throttle.check(ip, now + MAX_BLOCK),
            Ok(()),
            "never longer than a minute"
        );
        throttle.succeeded(ip);
        assert_eq!(throttle.failed(ip, now), Duration::ZERO);
    }

    #[test]
    fn ipv6_counts_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let now = Instant::now();
        let throttle = SignInThrottle::default();
        for _ in 0..=FREE_FAILURES {
            throttle.failed(a, now);
        }
        assert!(throttle.check(b, now).is_err(), "the same /64");
        assert_eq!(throttle.check(c, now), Ok(()));
    }
}
