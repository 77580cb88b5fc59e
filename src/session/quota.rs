//! The per-client creation rate of `<sessions create-rate-per-ip>`: a token bucket per client
//! address on each node, so one client cannot fill the cluster with sessions (the cluster-wide cap,
//! `max-active`, is the state machine's).
//!
//! Routing sends the requests without a session cookie by client address, so one client's new
//! sessions are mostly made on one node and a per-node bucket is close to a per-cluster one. IPv6
//! clients are counted by /64, the block one host usually has to itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most client addresses tracked at once; past this the buckets that are full again (idle for a
/// second or more, the same as a fresh one) are dropped, and if that is not enough, all are.
const MAX_TRACKED: usize = 100_000;

/// One client's bucket: `tokens` as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-address token buckets refilled at `per_second`, holding at most `per_second` tokens.
#[derive(Debug)]
pub struct CreateRate {
    /// Sessions per second per address (also the burst); 0 turns the limit off. Reloadable.
    per_second: AtomicU64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    refused_total: AtomicU64,
}

impl CreateRate {
    /// A limiter of `per_second` creates per second per client (0: none).
    pub fn new(per_second: u64) -> CreateRate {
        CreateRate {
            per_second: AtomicU64::new(per_second),
            buckets: Mutex::new(HashMap::new()),
            refused_total: AtomicU64::new(0),
        }
    }

    /// Applies a reloaded `<sessions create-rate-per-ip>`.
    pub fn set_per_second(&self, per_second: u64) {
        self.per_second.store(per_second, Ordering::Relaxed);
    }

    /// Creates refused since the start.
    pub fn refused_total(&self) -> u64 {
        self.refused_total.load(Ordering::Relaxed)
    }

    /// Takes one create for `client`; `Err(wait)` when its bucket is empty, `wait` being when the
    /// next token is there.
    pub fn try_take(&self, client: IpAddr) -> Result<(), Duration> {
        self.try_take_at(client, Instant::now())
    }

    fn try_take_at(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let per_second = self.per_second.load(Ordering::Relaxed);
        if per_second == 0 {
            return Ok(());
        }
        let rate = per_second as f64;
        let key = bucket_key(client);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&key) {
            buckets.retain(|_, bucket| refilled(bucket, now, rate) < rate);
            if buckets.len() >= MAX_TRACKED {
                // Too many clients at once to tell apart: start over rather than grow.
                buckets.clear();
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let tokens = refilled(bucket, now, rate);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }
}

/// The bucket's tokens at `now`: refilled at `rate` a second, up to `rate`.
fn refilled(bucket: &Bucket, now: Instant, rate: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(rate)
}

/// IPv4 addresses (and IPv4-mapped IPv6) as they are; other IPv6 addresses by their /64.
fn bucket_key(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn a_client_gets_its_burst_then_the_rate() {
        let rate = CreateRate::new(10);
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(rate.try_take_at(ip("192.0.2.1"), start), Ok(()));
        }
        let wait = rate
            .try_take_at(ip("192.0.2.1"), start)
            .expect_err("the burst is spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another client has its own bucket.
        assert_eq!(rate.try_take_at(ip("192.0.2.2"), start), Ok(()));
        // A tenth of a second later there is one token again, and only one.
        let later = start + Duration::from_millis(100);
        assert_eq!(rate.try_take_at(ip("192.0.2.1"), later), Ok(()));
        assert!(rate.try_take_at(ip("192.0.2.1"), later).is_err());
        assert_eq!(rate.refused_total(), 2);
    }

    #[test]
    fn ipv6_clients_share_a_bucket_per_64_and_zero_means_no_limit() {
        let rate = CreateRate::new(1);
        let start = Instant::now();
        assert_eq!(rate.try_take_at(ip("2001:db8::1"), start), Ok(()));
        assert!(rate.try_take_at(ip("2001:db8::ffff:2"), start).is_err());
        assert_eq!(rate.try_take_at(ip("2001:db8:0:1::1"), start), Ok(()));
        rate.set_per_second(0);
        for _ in 0..1000 {
            assert_eq!(rate.try_take_at(ip("2001:db8::1"), start), Ok(()));
        }
    }

    #[test]
    fn the_table_of_clients_stays_bounded() {
        let rate = CreateRate::new(5);
        let start = Instant::now();
        for n in 0..(MAX_TRACKED as u32 + 10) {
            let client = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            let _ = rate.try_take_at(client, start);
        }
        let tracked = rate
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert!(tracked <= MAX_TRACKED, "{tracked} buckets");
    }
}
