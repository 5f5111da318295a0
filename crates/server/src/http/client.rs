//! Who is calling, by address: the socket's peer, or, when the peer is a trusted proxy
//! (`api.trusted_proxies`), the client it names in `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;

use crate::app::AppState;

/// The client's address, put in each request's extensions by [`layer`]; `None` when the
/// server was not given socket addresses (in-process tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    proxies.iter().any(|n| n.contains(&ip))
}

/// The client behind `peer`: `peer` itself unless it is in `proxies`; then the last address
/// of `X-Forwarded-For` (read from the right, past every trusted proxy) that is not a trusted
/// proxy. An entry that is not an address stops the walk at the address to its right, so a
/// client cannot choose its own key by writing the header itself.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !trusted(ip, proxies) {
            break;
        }
    }
    client
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(None)))
    }
}

/// Middleware: records [`ClientAddr`] for the handlers and the limiters.
pub(super) async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = peer.map(|p| client_address(p, req.headers(), &state.auth().trusted_proxies));
    req.extensions_mut().insert(ClientAddr(client));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = headers(&["198.51.100.9"]);
        // Not a trusted peer: the header is ignored.
        assert_eq!(
            client_address(ip("203.0.113.5"), &h, &proxies),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_address(ip("203.0.113.5"), &h, &[]),
            ip("203.0.113.5")
        );
        // A trusted peer: the client it names.
        assert_eq!(
            client_address(ip("10.1.2.3"), &h, &proxies),
            ip("198.51.100.9")
        );
        // A spoofed entry on the left is not believed: the rightmost untrusted one is.
        let h = headers(&["1.2.3.4, 198.51.100.9", "10.0.0.7"]);
        assert_eq!(
            client_address(ip("10.1.2.3"), &h, &proxies),
            ip("198.51.100.9")
        );
        // Garbage stops the walk at the last good hop.
        let h = headers(&["nonsense, 10.0.0.8"]);
        assert_eq!(client_address(ip("10.1.2.3"), &h, &proxies), ip("10.0.0.8"));
        // No header: the proxy itself.
        assert_eq!(
            client_address(ip("10.1.2.3"), &HeaderMap::new(), &proxies),
            ip("10.1.2.3")
        );
        // An IPv4-mapped peer is matched as IPv4.
        assert_eq!(
            client_address(ip("::ffff:10.1.2.3"), &headers(&["198.51.100.9"]), &proxies),
            ip("198.51.100.9")
        );
    }
}
