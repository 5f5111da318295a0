//! Webhooks cannot reach inside: targets on loopback, private, link-local, unique-local (and
//! other non-public) addresses are refused when a rule names one literally and, through a
//! resolver hook, on the addresses actually connected to, so a name that resolves (or is
//! rebound) to one does not pass. `notify.allow_private_targets` turns this off.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is not a public unicast address: unspecified, loopback, private (RFC 1918),
/// shared (100.64/10), link-local, broadcast, multicast, documentation, benchmarking or
/// reserved IPv4; unspecified, loopback, unique-local (fc00::/7), link-local (fe80::/10),
/// multicast, documentation IPv6; and IPv4-mapped or -compatible forms of those.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => private_v4(a),
        IpAddr::V6(a) => private_v6(a),
    }
}

fn private_v4(a: Ipv4Addr) -> bool {
    let [o0, o1, o2, _] = a.octets();
    a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_broadcast()
        || a.is_multicast()
        || a.is_documentation()
        || o0 == 0
        || (o0 == 100 && (64..128).contains(&o1)) // shared address space (CGNAT)
        || (o0 == 192 && o1 == 0 && o2 == 0) // IETF protocol assignments
        || (o0 == 198 && (o1 == 18 || o1 == 19)) // benchmarking
        || o0 >= 240 // reserved
}

fn private_v6(a: Ipv6Addr) -> bool {
    if let Some(v4) = a.to_ipv4_mapped() {
        return private_v4(v4);
    }
    let s = a.segments();
    a.is_unspecified()
        || a.is_loopback()
        || a.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
        || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: reaches IPv4 space
}

/// A webhook target that is not a public address.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "{host} resolves to {ip}, which is not a public address; webhooks may not reach it unless notify.allow_private_targets = true"
)]
pub struct PrivateTarget {
    /// The host name asked for.
    pub host: String,
    /// The address refused.
    pub ip: IpAddr,
}

/// reqwest's resolver: the system's (`getaddrinfo`, through tokio), with non-public addresses
/// removed unless they are allowed; a name left with none fails with [`PrivateTarget`].
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// `notify.allow_private_targets`.
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| {
                    let ok = allow || !is_private(a.ip());
                    if !ok {
                        refused = Some(a.ip());
                    }
                    ok
                })
                .collect();
            if allowed.is_empty()
                && let Some(ip) = refused
            {
                return Err(Box::new(PrivateTarget { host, ip }) as _);
            }
            let addrs: Addrs = Box::new(allowed.into_iter());
            Ok(addrs)
        })
    }
}

/// The literal address of `url`'s host, when it is one and not public (reqwest does not ask
/// the resolver about literal addresses, so they are checked here).
pub fn private_literal(url: &reqwest::Url) -> Option<IpAddr> {
    let ip = match url.host()? {
        url::Host::Ipv4(a) => IpAddr::V4(a),
        url::Host::Ipv6(a) => IpAddr::V6(a),
        url::Host::Domain(_) => return None,
    };
    is_private(ip).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_public_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "172.32.0.1",
        ] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn literal_hosts_are_checked() {
        let u = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(private_literal(&u("http://127.0.0.1:8080/x")).is_some());
        assert!(private_literal(&u("http://[::1]/x")).is_some());
        assert!(
            private_literal(&u("http://2130706433/")).is_some(),
            "decimal 127.0.0.1"
        );
        assert!(private_literal(&u("https://8.8.8.8/")).is_none());
        assert!(private_literal(&u("https://hooks.example.com/")).is_none());
    }

    #[tokio::test]
    async fn localhost_is_refused_at_resolution_unless_allowed() {
        let name: Name = "localhost".parse().unwrap();
        let err = match (GuardedResolver {
            allow_private: false,
        })
        .resolve(name)
        .await
        {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<PrivateTarget>().is_some(), "{err}");
        let name: Name = "localhost".parse().unwrap();
        let addrs: Vec<_> = (GuardedResolver {
            allow_private: true,
        })
        .resolve(name)
        .await
        .unwrap()
        .collect();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()));
    }
}
