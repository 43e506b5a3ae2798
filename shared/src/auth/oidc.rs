//! Identity-provider mode: the provider's public keys, from its discovery
//! document (`<issuer>/.well-known/openid-configuration`) and the JWKS it
//! names, held in memory. They are fetched at start, again on a schedule
//! (so a key the provider withdrew stops being trusted), and again when a
//! token names a key not held, at most once per [`UNKNOWN_KID_INTERVAL`]
//! (so a provider's key rotation is followed without a restart, and a flood
//! of made-up `kid`s costs the provider one request per interval). A token
//! whose key is held never waits on the provider: while it is down or slow,
//! cached keys keep working.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::Refusal;
use crate::metrics::names;

/// At most one fetch on behalf of tokens with an unknown `kid` per interval
/// (the contract's figure).
pub const UNKNOWN_KID_INTERVAL: Duration = Duration::from_secs(10);
/// The scheduled fetch while the provider answers.
const REFRESH_EVERY: Duration = Duration::from_secs(300);
/// The scheduled fetch while it does not: soon, but not a storm.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// One HTTP request to the provider. A request whose token names an unknown
/// key waits this long at most (twice: discovery, then the keys).
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);
/// A discovery document or key set larger than this is not one.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Checks an issuer URL the way the contract asks: `https://`, or `http://`
/// on the loopback only (a provider on the same machine, in development).
pub fn check_provider_url(name: &str, raw: &str) -> anyhow::Result<reqwest::Url> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| anyhow::anyhow!("{name}={raw:?} is not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => anyhow::bail!(
            "{name}={raw:?}: an http:// identity provider is allowed on the loopback only \
             (127.0.0.1, ::1, localhost); use https://"
        ),
        other => anyhow::bail!("{name}={raw:?}: the scheme must be https, not {other}"),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// What a token signed with `alg` must carry from this issuer for this audience.
fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = super::base_validation(alg);
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation
}

/// A key from the provider, with the one algorithm it may verify.
struct Key {
    alg: Algorithm,
    decoding: Arc<DecodingKey>,
}

#[derive(Default)]
struct Health {
    /// Whether the last fetch succeeded; `None` before the first ends.
    up: Option<bool>,
    last_success: Option<Instant>,
    last_error: Option<String>,
}

/// Why the provider was asked for its keys, for the fetch counter and the log.
#[derive(Debug, Clone, Copy)]
enum Cause {
    Start,
    Schedule,
    UnknownKid,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::Start => "start",
            Cause::Schedule => "schedule",
            Cause::UnknownKid => "unknown_kid",
        }
    }
}

pub struct Provider {
    issuer: String,
    /// The rules besides the signature, one per algorithm, made once: a
    /// request only borrows them.
    rs256: Validation,
    es256: Validation,
    discovery_url: reqwest::Url,
    /// `FEEDBACK_OIDC_CA_FILE`: more authorities to trust for the provider.
    ca_file: Option<PathBuf>,
    /// Never held across an await: readers only clone the `Arc`.
    keys: RwLock<Arc<HashMap<String, Key>>>,
    /// One fetch at a time; holds when the last fetch for an unknown `kid` began.
    fetching: tokio::sync::Mutex<Option<Instant>>,
    /// The `jwks_uri` of the last discovery document, kept while it works.
    jwks_uri: Mutex<Option<reqwest::Url>>,
    health: Mutex<Health>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

impl Provider {
    /// The provider for `issuer`, its keys fetched in the background from
    /// now on (this returns at once: a provider that is down at start delays
    /// no process, and its state shows on `/readyz`).
    pub fn start(
        issuer: &str,
        audience: &str,
        ca_file: Option<PathBuf>,
    ) -> anyhow::Result<Arc<Self>> {
        let issuer_url = check_provider_url("FEEDBACK_OIDC_ISSUER", issuer)?;
        let discovery_url = reqwest::Url::parse(&format!(
            "{}/.well-known/openid-configuration",
            issuer_url.as_str().trim_end_matches('/')
        ))?;
        let provider = Arc::new(Self {
            issuer: issuer.to_owned(),
            rs256: validation(Algorithm::RS256, issuer, audience),
            es256: validation(Algorithm::ES256, issuer, audience),
            discovery_url,
            ca_file,
            keys: RwLock::new(Arc::default()),
            fetching: tokio::sync::Mutex::new(None),
            jwks_uri: Mutex::new(None),
            health: Mutex::new(Health::default()),
        });
        metrics::gauge!(names::AUTH_PROVIDER_UP).set(0.0);
        metrics::gauge!(names::AUTH_PROVIDER_KEYS).set(0.0);
        tokio::spawn(Self::refresh_forever(Arc::downgrade(&provider)));
        Ok(provider)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The rules a token from this provider must pass, besides its
    /// signature; `alg` is RS256 or ES256 (the caller refused the others).
    pub(super) fn validation(&self, alg: Algorithm) -> &Validation {
        match alg {
            Algorithm::ES256 => &self.es256,
            _ => &self.rs256,
        }
    }

    /// The key `kid` names, for a token signed with `alg`. A `kid` not held
    /// sends for the provider's keys once, unless that was done less than
    /// [`UNKNOWN_KID_INTERVAL`] ago; then it is refused.
    pub(super) async fn key(&self, kid: &str, alg: Algorithm) -> Result<Arc<DecodingKey>, Refusal> {
        if let Some(found) = self.held(kid, alg) {
            return found;
        }
        let mut last = self.fetching.lock().await;
        // The fetch this request queued behind may have brought the key.
        if let Some(found) = self.held(kid, alg) {
            return found;
        }
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_INTERVAL) {
            return Err(Refusal::UnknownKey);
        }
        *last = Some(Instant::now());
        self.fetch(Cause::UnknownKid).await;
        drop(last);
        self.held(kid, alg).unwrap_or(Err(Refusal::UnknownKey))
    }

    fn held(&self, kid: &str, alg: Algorithm) -> Option<Result<Arc<DecodingKey>, Refusal>> {
        let keys = self
            .keys
            .read()
            .expect("no panic while holding the key lock")
            .clone();
        keys.get(kid).map(|key| {
            if key.alg == alg {
                Ok(key.decoding.clone())
            } else {
                // A token claiming another algorithm than its key's: the
                // algorithm-confusion attack, or a broken token.
                Err(Refusal::Algorithm)
            }
        })
    }

    /// The provider's state for `/readyz`.
    pub fn readiness(&self) -> serde_json::Value {
        let health = self
            .health
            .lock()
            .expect("no panic while holding the health lock");
        let keys = self
            .keys
            .read()
            .expect("no panic while holding the key lock")
            .len();
        let state = match health.up {
            None => "starting",
            Some(true) => "up",
            Some(false) => "down",
        };
        serde_json::json!({
            "mode": "identity_provider",
            "issuer": self.issuer,
            "state": state,
            "keys": keys,
            "last_success_secs_ago": health.last_success.map(|at| at.elapsed().as_secs()),
            "last_error": health.last_error,
        })
    }

    async fn refresh_forever(provider: std::sync::Weak<Self>) {
        let mut cause = Cause::Start;
        let mut retry = RETRY_FIRST;
        loop {
            let Some(this) = provider.upgrade() else {
                return;
            };
            let ok = {
                let _one_at_a_time = this.fetching.lock().await;
                this.fetch(cause).await
            };
            drop(this);
            let pause = if ok {
                retry = RETRY_FIRST;
                REFRESH_EVERY
            } else {
                let pause = retry;
                retry = (retry * 2).min(RETRY_MAX);
                pause
            };
            tokio::time::sleep(pause).await;
            cause = Cause::Schedule;
        }
    }

    /// Fetches the keys and replaces the held set; `false` (and the held set
    /// kept) when the provider did not answer with a usable one.
    async fn fetch(&self, cause: Cause) -> bool {
        let result = self.fetch_keys().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(names::AUTH_PROVIDER_FETCHES_TOTAL, "cause" => cause.as_str(), "outcome" => outcome)
            .increment(1);
        let mut health = self
            .health
            .lock()
            .expect("no panic while holding the health lock");
        match result {
            Ok(keys) => {
                let count = keys.len();
                *self
                    .keys
                    .write()
                    .expect("no panic while holding the key lock") = Arc::new(keys);
                health.up = Some(true);
                health.last_success = Some(Instant::now());
                health.last_error = None;
                metrics::gauge!(names::AUTH_PROVIDER_UP).set(1.0);
                metrics::gauge!(names::AUTH_PROVIDER_KEYS).set(count as f64);
                tracing::debug!(
                    cause = cause.as_str(),
                    keys = count,
                    "identity provider keys fetched"
                );
                true
            }
            Err(err) => {
                if health.up != Some(false) {
                    tracing::warn!(cause = cause.as_str(), issuer = %self.issuer, error = %err,
                        "identity provider unreachable; tokens signed with keys already held are still accepted");
                }
                health.up = Some(false);
                health.last_error = Some(format!("{err:#}"));
                metrics::gauge!(names::AUTH_PROVIDER_UP).set(0.0);
                false
            }
        }
    }

    /// A client for one fetch. Made each time so that a CA file that
    /// appears or changes later (a front door's local authority, made on its
    /// first start) is read without a restart; fetches are rare enough.
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        use anyhow::Context;
        let mut builder = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .connect_timeout(HTTP_TIMEOUT)
            // The documents are where the issuer says; a redirect elsewhere is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("course-feedback/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &self.ca_file {
            let shown = path.display();
            let pem = std::fs::read(path)
                .with_context(|| format!("FEEDBACK_OIDC_CA_FILE={shown}: cannot read it"))?;
            let authorities = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("FEEDBACK_OIDC_CA_FILE={shown}: not PEM certificates"))?;
            anyhow::ensure!(
                !authorities.is_empty(),
                "FEEDBACK_OIDC_CA_FILE={shown}: no certificate in it"
            );
            for authority in authorities {
                builder = builder.add_root_certificate(authority);
            }
        }
        Ok(builder.build()?)
    }

    async fn fetch_keys(&self) -> anyhow::Result<HashMap<String, Key>> {
        let client = self.client()?;
        let known = self
            .jwks_uri
            .lock()
            .expect("no panic while holding the lock")
            .clone();
        let jwks_uri = match known {
            Some(uri) => uri,
            None => self.discover(&client).await?,
        };
        let set = match get_json::<RawKeySet>(&client, &jwks_uri).await {
            Ok(set) => set,
            Err(err) => {
                // Perhaps the provider moved its keys: read discovery again next time.
                *self
                    .jwks_uri
                    .lock()
                    .expect("no panic while holding the lock") = None;
                return Err(err);
            }
        };
        let keys: HashMap<String, Key> = set.keys.into_iter().filter_map(usable_key).collect();
        anyhow::ensure!(
            !keys.is_empty(),
            "the provider's JWKS at {jwks_uri} holds no RS256 or ES256 signing key"
        );
        Ok(keys)
    }

    async fn discover(&self, client: &reqwest::Client) -> anyhow::Result<reqwest::Url> {
        let doc: Discovery = get_json(client, &self.discovery_url).await?;
        // OpenID Connect Discovery 1.0, section 4.3: the document must name
        // the issuer it was asked for, exactly.
        anyhow::ensure!(
            doc.issuer == self.issuer,
            "the discovery document names the issuer {:?}, not FEEDBACK_OIDC_ISSUER={:?}",
            doc.issuer,
            self.issuer
        );
        let jwks_uri = check_provider_url("jwks_uri", &doc.jwks_uri)?;
        *self
            .jwks_uri
            .lock()
            .expect("no panic while holding the lock") = Some(jwks_uri.clone());
        Ok(jwks_uri)
    }
}

async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    url: &reqwest::Url,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let response = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "GET {url}: {status}");
    anyhow::ensure!(
        response.content_length().unwrap_or(0) <= MAX_DOCUMENT_BYTES as u64,
        "GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes"
    );
    let body = response
        .bytes()
        .await
        .with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(
        body.len() <= MAX_DOCUMENT_BYTES,
        "GET {url}: larger than {MAX_DOCUMENT_BYTES} bytes"
    );
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: not the JSON expected"))
}

/// A signing key this product accepts: RSA for RS256 or P-256 for ES256,
/// with a `kid`, not marked for encryption. Anything else in the set (the
/// provider's encryption keys, symmetric keys, other curves) is left out;
/// a symmetric key in particular would let whoever reads the set sign.
fn usable_key(raw: serde_json::Value) -> Option<(String, Key)> {
    let jwk: Jwk = serde_json::from_value(raw).ok()?;
    let kid = jwk.common.key_id.clone()?;
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    let decoding = DecodingKey::from_jwk(&jwk).ok()?;
    Some((
        kid,
        Key {
            alg,
            decoding: Arc::new(decoding),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_issuers_are_allowed_on_the_loopback_only() {
        for ok in [
            "https://login.example.edu/realms/x",
            "http://127.0.0.1:8180/realms/feedback",
            "http://127.8.0.1/x",
            "http://[::1]:8180/x",
            "http://localhost:8180/realms/feedback",
        ] {
            assert!(
                check_provider_url("FEEDBACK_OIDC_ISSUER", ok).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://login.example.edu/realms/x",
            "http://10.0.0.1/x",
            "http://localhost.example.edu/x",
            "ftp://127.0.0.1/x",
            "not a url",
        ] {
            let err = check_provider_url("FEEDBACK_OIDC_ISSUER", bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("FEEDBACK_OIDC_ISSUER"), "{bad}: {err}");
        }
    }

    #[test]
    fn only_signing_keys_of_the_two_algorithms_are_kept() {
        let rsa = serde_json::json!({"kty": "RSA", "kid": "r", "use": "sig", "alg": "RS256",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
            "e": "AQAB"});
        let ec = serde_json::json!({"kty": "EC", "kid": "e", "crv": "P-256", "alg": "ES256",
            "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
        let mut enc = rsa.clone();
        enc["kid"] = "enc".into();
        enc["use"] = "enc".into();
        let mut p384 = ec.clone();
        p384["kid"] = "p384".into();
        p384["crv"] = "P-384".into();
        let mut mislabeled = rsa.clone();
        mislabeled["kid"] = "ps".into();
        mislabeled["alg"] = "PS256".into();
        let mut no_kid = rsa.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        let oct = serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"});
        let kept: HashMap<String, Key> = [rsa, ec, enc, p384, mislabeled, no_kid, oct]
            .into_iter()
            .filter_map(usable_key)
            .collect();
        let mut kids: Vec<_> = kept
            .iter()
            .map(|(kid, key)| (kid.as_str(), key.alg))
            .collect();
        kids.sort_by_key(|(kid, _)| *kid);
        assert_eq!(kids, [("e", Algorithm::ES256), ("r", Algorithm::RS256)]);
    }
}
