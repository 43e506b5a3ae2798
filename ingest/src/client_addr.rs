//! The client's address for the per-IP rate limit.
//!
//! Behind a reverse proxy every request's TCP peer is the proxy, so one
//! limit would throttle every student at once. `FEEDBACK_TRUSTED_PROXIES`
//! names the proxies whose `X-Forwarded-For` is believed. The header is read
//! from the right (each proxy appends the address it saw), skipping trusted
//! hops: the first address that is not a trusted proxy is the client. Entries
//! to its left were written by the client itself and could say anything, so
//! they are never used. With no trusted proxy, or a peer that is not one, the
//! header is ignored and the peer is the client.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` ingest believes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

/// A `FEEDBACK_TRUSTED_PROXIES` entry that is neither an address nor a CIDR.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address or a CIDR (such as 10.0.0.5 or 10.0.0.0/8)")]
pub struct BadProxy(String);

impl FromStr for TrustedProxies {
    type Err = BadProxy;

    /// Addresses and CIDRs separated by commas or spaces.
    fn from_str(list: &str) -> Result<Self, BadProxy> {
        list.split(|c: char| c == ',' || c.is_whitespace())
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| BadProxy(entry.to_owned()))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// The address the per-IP limit keys on, for a request from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        // Several header lines count as one list, in order.
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(addr) => {
                    client = addr.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
                // Garbage where an address should be: the last address a
                // trusted proxy vouched for is as far as the chain holds.
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_cidrs_separated_by_commas_or_spaces() {
        let proxies: TrustedProxies = "10.0.0.5, 172.16.0.0/12 ::1".parse().unwrap();
        assert!(proxies.trusts(ip("10.0.0.5")));
        assert!(!proxies.trusts(ip("10.0.0.6")));
        assert!(proxies.trusts(ip("172.31.255.1")));
        assert!(proxies.trusts(ip("::1")));
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        let err = "10.0.0.5,proxy.local"
            .parse::<TrustedProxies>()
            .unwrap_err();
        assert!(err.to_string().contains("proxy.local"), "{err}");
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        let none = TrustedProxies::default();
        let forged = headers(&["203.0.113.9"]);
        assert_eq!(none.client(ip("198.51.100.7"), &forged), ip("198.51.100.7"));
    }

    #[test]
    fn a_peer_that_is_not_trusted_is_the_client_whatever_it_claims() {
        let proxies: TrustedProxies = "10.0.0.5".parse().unwrap();
        let forged = headers(&["203.0.113.9"]);
        assert_eq!(
            proxies.client(ip("198.51.100.7"), &forged),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_rightmost_untrusted_hop_is_the_client() {
        let proxies: TrustedProxies = "10.0.0.0/24".parse().unwrap();
        // The client forged the first entry; the proxy appended what it saw.
        let chain = headers(&["1.1.1.1, 203.0.113.9"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &chain), ip("203.0.113.9"));
        // Two trusted proxies in a row, over two header lines.
        let chain = headers(&["1.1.1.1, 203.0.113.9", "10.0.0.7"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &chain), ip("203.0.113.9"));
        // An IPv4-mapped peer is the same proxy.
        assert_eq!(
            proxies.client(ip("::ffff:10.0.0.5"), &headers(&["203.0.113.9"])),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn a_chain_that_breaks_stops_at_the_last_trusted_hop() {
        let proxies: TrustedProxies = "10.0.0.0/24".parse().unwrap();
        // No header at all: the proxy itself.
        assert_eq!(
            proxies.client(ip("10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5")
        );
        // Garbage right after a trusted hop.
        let chain = headers(&["203.0.113.9, not-an-ip, 10.0.0.7"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &chain), ip("10.0.0.7"));
        // Every hop trusted: the leftmost is as far as it goes.
        let chain = headers(&["10.0.0.8, 10.0.0.7"]);
        assert_eq!(proxies.client(ip("10.0.0.5"), &chain), ip("10.0.0.8"));
    }
}
