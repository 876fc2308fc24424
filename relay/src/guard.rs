//! Per-address limits against floods and password guessing.
//!
//! Each client address may hold a bounded number of connections, open new
//! ones at a bounded rate, and fail to log in a bounded number of times per
//! minute before it is refused for a minute. Behind a reverse proxy every
//! peer is the proxy, so the client address comes from `X-Forwarded-For`
//! when, and only when, the peer is a configured trusted proxy.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::RelayConfig;

/// How long an address that failed too many logins is refused.
pub const BLOCK_TIME: Duration = Duration::from_secs(60);

/// Reason a connection attempt is rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The address already has the maximum number of connections.
    #[error("too many connections from {ip}: at most {max} are allowed")]
    TooManyConnections {
        /// Client address.
        ip: IpAddr,
        /// Configured maximum.
        max: u32,
    },
    /// The address opened connections too fast.
    #[error("too many connection attempts from {ip}: wait a moment and retry")]
    RateLimited {
        /// Client address.
        ip: IpAddr,
    },
    /// The address failed to log in too often.
    #[error("too many failed logins from {ip}: retry in {secs} s")]
    Blocked {
        /// Client address.
        ip: IpAddr,
        /// Seconds left.
        secs: u64,
    },
}

/// The per-address limits of one relay.
pub struct PeerGuard {
    trusted_proxies: Vec<IpAddr>,
    exempt: Vec<IpAddr>,
    max_connections: u32,
    connects: DefaultKeyedRateLimiter<IpAddr>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    blocked: DashMap<IpAddr, Instant>,
    connections: DashMap<IpAddr, u32>,
}

/// A held connection slot of one address; dropping it frees the slot.
pub struct ConnectionPermit {
    guard: Arc<PeerGuard>,
    ip: Option<IpAddr>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            if let Some(mut count) = self.guard.connections.get_mut(&ip) {
                *count = count.saturating_sub(1);
            }
            self.guard
                .connections
                .remove_if(&ip, |_, count| *count == 0);
        }
    }
}

fn non_zero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value.max(1)).expect("value is at least 1")
}

impl PeerGuard {
    /// Creates the limits from the relay settings.
    pub fn new(config: &RelayConfig) -> Self {
        let connect_quota = Quota::per_second(non_zero(config.connect_rate_per_ip))
            .allow_burst(non_zero(config.connect_rate_per_ip.saturating_mul(2)));
        let failure_quota = Quota::per_minute(non_zero(config.failed_auth_per_minute));
        Self {
            trusted_proxies: config.trusted_proxies.clone(),
            exempt: config.exempt_addresses.clone(),
            max_connections: config.max_connections_per_ip,
            connects: RateLimiter::keyed(connect_quota),
            failures: RateLimiter::keyed(failure_quota),
            blocked: DashMap::new(),
            connections: DashMap::new(),
        }
    }

    /// Returns the client address: the peer itself, or, when the peer is a
    /// trusted proxy, the right-most `X-Forwarded-For` address that is not one.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = peer.ip().to_canonical();
        if !self.trusted_proxies.contains(&peer_ip) {
            return peer_ip;
        }
        let forwarded: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .map_while(|part| part.parse::<IpAddr>().ok())
            .map(|ip| ip.to_canonical())
            .collect();
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !self.trusted_proxies.contains(ip))
            .unwrap_or(peer_ip)
    }

    fn is_exempt(&self, ip: &IpAddr) -> bool {
        self.exempt.contains(ip)
    }

    /// Admits a new connection from `ip`, or returns the reason to reject it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Rejection> {
        if self.is_exempt(&ip) {
            return Ok(ConnectionPermit {
                guard: Arc::clone(self),
                ip: None,
            });
        }
        if let Some(until) = self.blocked.get(&ip).map(|until| *until) {
            let now = Instant::now();
            if until > now {
                return Err(Rejection::Blocked {
                    ip,
                    secs: until.duration_since(now).as_secs().max(1),
                });
            }
            self.blocked.remove(&ip);
        }
        if self.connects.check_key(&ip).is_err() {
            return Err(Rejection::RateLimited { ip });
        }
        let mut count = self.connections.entry(ip).or_insert(0);
        if *count >= self.max_connections {
            return Err(Rejection::TooManyConnections {
                ip,
                max: self.max_connections,
            });
        }
        *count += 1;
        Ok(ConnectionPermit {
            guard: Arc::clone(self),
            ip: Some(ip),
        })
    }

    /// Counts a failed login; past the limit the address is refused for
    /// [`BLOCK_TIME`]. Returns true when the address is now blocked.
    pub fn record_failed_auth(&self, ip: IpAddr) -> bool {
        if self.is_exempt(&ip) {
            return false;
        }
        if self.failures.check_key(&ip).is_err() {
            self.blocked.insert(ip, Instant::now() + BLOCK_TIME);
            return true;
        }
        false
    }

    /// Forgets idle rate-limiter entries and expired blocks, bounding the
    /// memory that many distinct addresses can cost.
    pub fn cleanup(&self) {
        self.connects.retain_recent();
        self.failures.retain_recent();
        let now = Instant::now();
        self.blocked.retain(|_, until| *until > now);
    }

    /// Addresses currently tracked, for tests and reports.
    pub fn tracked_addresses(&self) -> usize {
        self.connections.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(adjust: impl FnOnce(&mut RelayConfig)) -> Arc<PeerGuard> {
        let mut config = RelayConfig::default();
        adjust(&mut config);
        Arc::new(PeerGuard::new(&config))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxy() {
        let guard = guard(|c| c.trusted_proxies = vec![ip("10.0.0.1")]);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.1".parse().unwrap());
        let proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let stranger: SocketAddr = "198.51.100.7:5000".parse().unwrap();
        assert_eq!(guard.client_ip(proxy, &headers), ip("203.0.113.9"));
        assert_eq!(guard.client_ip(stranger, &headers), ip("198.51.100.7"));
        assert_eq!(guard.client_ip(proxy, &HeaderMap::new()), ip("10.0.0.1"));
    }

    #[test]
    fn connection_cap_per_address() {
        let guard = guard(|c| {
            c.max_connections_per_ip = 2;
            c.connect_rate_per_ip = 100;
        });
        let client = ip("198.51.100.1");
        let first = guard.admit(client).unwrap();
        let _second = guard.admit(client).unwrap();
        assert!(matches!(
            guard.admit(client),
            Err(Rejection::TooManyConnections { max: 2, .. })
        ));
        assert!(
            guard.admit(ip("198.51.100.2")).is_ok(),
            "other addresses unaffected"
        );
        drop(first);
        assert!(
            guard.admit(client).is_ok(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn connect_rate_per_address() {
        let guard = guard(|c| {
            c.connect_rate_per_ip = 2;
            c.max_connections_per_ip = 100;
        });
        let client = ip("198.51.100.3");
        let mut permits = Vec::new();
        let mut rejected = 0;
        for _ in 0..10 {
            match guard.admit(client) {
                Ok(permit) => permits.push(permit),
                Err(Rejection::RateLimited { .. }) => rejected += 1,
                Err(other) => panic!("unexpected rejection {other}"),
            }
        }
        assert_eq!(permits.len(), 4, "a burst of twice the rate passes");
        assert_eq!(rejected, 6);
    }

    #[test]
    fn failed_logins_block_address() {
        let guard = guard(|c| c.failed_auth_per_minute = 3);
        let client = ip("198.51.100.4");
        let blocked: Vec<bool> = (0..4).map(|_| guard.record_failed_auth(client)).collect();
        assert_eq!(blocked, [false, false, false, true]);
        assert!(matches!(
            guard.admit(client),
            Err(Rejection::Blocked { .. })
        ));
    }

    #[test]
    fn loopback_is_exempt_by_default() {
        let guard = guard(|c| {
            c.max_connections_per_ip = 1;
            c.failed_auth_per_minute = 1;
        });
        let local = ip("127.0.0.1");
        let permits: Vec<_> = (0..50).map(|_| guard.admit(local).unwrap()).collect();
        assert_eq!(permits.len(), 50);
        for _ in 0..5 {
            assert!(!guard.record_failed_auth(local));
        }
        assert_eq!(guard.tracked_addresses(), 0);
    }
}
