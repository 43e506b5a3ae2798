//! Who is calling. Every API request carries `Authorization: Bearer <JWT>`,
//! checked in one of the contract's two modes:
//!
//! - identity-provider mode (`FEEDBACK_OIDC_ISSUER` set): RS256 or ES256
//!   tokens from the university's provider, checked against the public keys
//!   of its discovery document ([`oidc`]). No service holds a key that can
//!   sign a token.
//! - shared-secret mode: HS256 with `FEEDBACK_JWT_SECRET`, for development,
//!   tests and quick trials ([`secret`]).
//!
//! Either way a refused token gets one answer, 401 `invalid_token` with
//! [`INVALID_TOKEN_MESSAGE`]: which check failed goes to the log and to
//! `auth_tokens_refused_total{reason}`, never to the client, so probing
//! teaches an attacker nothing.

mod cache;
mod claims;
pub mod oidc;
mod secret;

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use jsonwebtoken::{Algorithm, Validation};

pub use claims::{Claims, Principal, Role};
pub use secret::{JwtKeys, MIN_SECRET_LEN};

use crate::env::{parse_or, var};
use crate::http::ApiError;
use crate::metrics::names;

/// The one message of every 401, on every service.
pub const INVALID_TOKEN_MESSAGE: &str =
    "a valid bearer token is required: sign in again (Authorization: Bearer <token>)";

/// The default of `FEEDBACK_JWT_MAX_TTL_SECS`: one day.
pub const DEFAULT_MAX_TTL_SECS: u64 = 86_400;

/// Seconds of clock difference tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// Why a token was refused: logged and counted, never told to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <token>`, or not a JWT at all.
    Malformed,
    /// An algorithm this mode does not accept (`none`, HS256 in
    /// identity-provider mode, RS256 in shared-secret mode...), or one
    /// other than its key's.
    Algorithm,
    /// Identity-provider mode: no `kid`, or one the provider does not list.
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    /// `exp` further ahead than `FEEDBACK_JWT_MAX_TTL_SECS`.
    Lifetime,
    /// A required claim missing, empty or of the wrong type.
    Claims,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Issuer => "issuer",
            Refusal::Audience => "audience",
            Refusal::Lifetime => "lifetime",
            Refusal::Claims => "claims",
        }
    }

    fn from_jwt(err: &jsonwebtoken::errors::Error) -> Self {
        use jsonwebtoken::errors::ErrorKind as K;
        match err.kind() {
            K::InvalidSignature => Refusal::Signature,
            K::ExpiredSignature => Refusal::Expired,
            K::ImmatureSignature => Refusal::NotYetValid,
            K::InvalidIssuer => Refusal::Issuer,
            K::InvalidAudience => Refusal::Audience,
            K::InvalidAlgorithm
            | K::InvalidAlgorithmName
            | K::MissingAlgorithm
            | K::UnsupportedAlgorithm => Refusal::Algorithm,
            K::MissingRequiredClaim(_)
            | K::InvalidClaimFormat(_)
            | K::InvalidSubject
            | K::Json(_) => Refusal::Claims,
            _ => Refusal::Malformed,
        }
    }

    /// The answer: counted and logged with the reason, which the client is
    /// not told.
    pub fn answer(self) -> ApiError {
        metrics::counter!(names::AUTH_TOKENS_REFUSED_TOTAL, "reason" => self.as_str()).increment(1);
        tracing::info!(reason = self.as_str(), "bearer token refused");
        let challenge = if self == Refusal::Missing {
            "Bearer"
        } else {
            "Bearer error=\"invalid_token\""
        };
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            INVALID_TOKEN_MESSAGE,
        )
        .with_header(header::WWW_AUTHENTICATE, challenge)
    }
}

/// How tokens are checked, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    /// `FEEDBACK_JWT_MAX_TTL_SECS`: a token whose `exp` is further ahead is refused.
    pub max_ttl_secs: u64,
}

#[derive(Debug, Clone)]
pub enum Mode {
    /// `FEEDBACK_JWT_SECRET`.
    SharedSecret { secret: String },
    /// `FEEDBACK_OIDC_ISSUER`, `FEEDBACK_OIDC_AUDIENCE`, `FEEDBACK_OIDC_CLIENT_ID`.
    IdentityProvider {
        issuer: String,
        audience: String,
        client_id: Option<String>,
        /// `FEEDBACK_OIDC_CA_FILE`: authorities to trust for the provider
        /// besides the system's (a university's private one, or a trial's
        /// front door with its own local authority).
        ca_file: Option<std::path::PathBuf>,
    },
}

impl Settings {
    /// Reads the mode's variables; an error names the variable at fault.
    pub fn from_env() -> anyhow::Result<Self> {
        let max_ttl_secs = parse_or("FEEDBACK_JWT_MAX_TTL_SECS", DEFAULT_MAX_TTL_SECS)?;
        anyhow::ensure!(
            max_ttl_secs >= 1,
            "FEEDBACK_JWT_MAX_TTL_SECS must be at least 1"
        );
        let mode = match var("FEEDBACK_OIDC_ISSUER") {
            Some(issuer) => {
                oidc::check_provider_url("FEEDBACK_OIDC_ISSUER", &issuer)?;
                let audience = var("FEEDBACK_OIDC_AUDIENCE").ok_or_else(|| {
                    anyhow::anyhow!(
                        "FEEDBACK_OIDC_AUDIENCE is not set: it is required with FEEDBACK_OIDC_ISSUER \
                         (the audience this product's tokens carry in `aud`)"
                    )
                })?;
                if var("FEEDBACK_JWT_SECRET").is_some() {
                    tracing::warn!(
                        "FEEDBACK_JWT_SECRET is ignored in identity-provider mode: HS256 tokens are refused; \
                         remove it from this service's environment"
                    );
                }
                let client_id = var("FEEDBACK_OIDC_CLIENT_ID");
                if client_id.is_none() {
                    tracing::warn!("FEEDBACK_OIDC_CLIENT_ID is not set: the pages cannot sign in");
                }
                Mode::IdentityProvider {
                    issuer,
                    audience,
                    client_id,
                    ca_file: var("FEEDBACK_OIDC_CA_FILE").map(std::path::PathBuf::from),
                }
            }
            None => Mode::SharedSecret {
                secret: crate::env::jwt_secret()?,
            },
        };
        Ok(Self { mode, max_ttl_secs })
    }

    pub fn shared_secret(secret: &str) -> Self {
        Self {
            mode: Mode::SharedSecret {
                secret: secret.to_owned(),
            },
            max_ttl_secs: DEFAULT_MAX_TTL_SECS,
        }
    }

    pub fn is_identity_provider(&self) -> bool {
        matches!(self.mode, Mode::IdentityProvider { .. })
    }
}

/// Checks bearer tokens; cheap to clone, one per process.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Verifier,
    /// Tokens that passed every check lately (`cache.rs`).
    verified: cache::TokenCache,
    max_ttl_secs: u64,
    client_id: Option<String>,
}

enum Verifier {
    SharedSecret(Box<JwtKeys>),
    Provider(Arc<oidc::Provider>),
}

impl Authenticator {
    /// In identity-provider mode this starts fetching the provider's keys in
    /// the background, so it must run inside the Tokio runtime.
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        let (verifier, client_id) = match &settings.mode {
            Mode::SharedSecret { secret } => (
                Verifier::SharedSecret(Box::new(JwtKeys::new(secret.as_bytes())?)),
                None,
            ),
            Mode::IdentityProvider {
                issuer,
                audience,
                client_id,
                ca_file,
            } => (
                Verifier::Provider(oidc::Provider::start(issuer, audience, ca_file.clone())?),
                client_id.clone(),
            ),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                verifier,
                verified: cache::TokenCache::new(LEEWAY_SECS),
                max_ttl_secs: settings.max_ttl_secs,
                client_id,
            }),
        })
    }

    /// The caller, or 401 `invalid_token`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        self.verify_headers(headers).await.map_err(Refusal::answer)
    }

    /// The caller, who must hold one of `allowed`: 401 `invalid_token`
    /// without a valid token, 403 `forbidden` with another role.
    pub async fn require(
        &self,
        headers: &HeaderMap,
        allowed: &[Role],
    ) -> Result<Principal, ApiError> {
        let principal = self.authenticate(headers).await?;
        match principal.role {
            Some(role) if allowed.contains(&role) => Ok(principal),
            _ => {
                let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
                Err(ApiError::forbidden(format!(
                    "this needs the {} role",
                    names.join(" or ")
                )))
            }
        }
    }

    async fn verify_headers(&self, headers: &HeaderMap) -> Result<Principal, Refusal> {
        let value = headers.get(header::AUTHORIZATION).ok_or(Refusal::Missing)?;
        let token = value
            .to_str()
            .ok()
            // The scheme is case-insensitive (RFC 9110 §11.1): `BEARER x` too.
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or(Refusal::Malformed)?;
        self.verify(token).await
    }

    /// Checks one token: its algorithm against the mode's, its signature,
    /// `exp`, `nbf`, and in identity-provider mode `iss` and `aud`; then the
    /// lifetime and `sub`. A token that passed all of them lately is taken
    /// from the cache, its `exp` checked again (`cache.rs`).
    pub async fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        let key = cache::TokenCache::key(token);
        if let Some(principal) = self.inner.verified.get(&key, now_secs()) {
            return Ok(principal);
        }
        let (principal, exp) = self.verify_in_full(token).await?;
        self.inner.verified.insert(key, principal.clone(), exp);
        Ok(principal)
    }

    /// [`Authenticator::verify`] without the cache: the principal and the token's `exp`.
    async fn verify_in_full(&self, token: &str) -> Result<(Principal, u64), Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| header_refusal(token))?;
        let data = match &self.inner.verifier {
            Verifier::SharedSecret(keys) => {
                if header.alg != Algorithm::HS256 {
                    return Err(Refusal::Algorithm);
                }
                jsonwebtoken::decode::<claims::TokenClaims>(
                    token,
                    keys.decoding(),
                    keys.validation(),
                )
            }
            Verifier::Provider(provider) => {
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(Refusal::Algorithm);
                }
                let kid = header.kid.as_deref().ok_or(Refusal::UnknownKey)?;
                let key = provider.key(kid, header.alg).await?;
                jsonwebtoken::decode::<claims::TokenClaims>(
                    token,
                    &key,
                    provider.validation(header.alg),
                )
            }
        }
        .map_err(|err| Refusal::from_jwt(&err))?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(Refusal::Claims);
        }
        if claims.exp > now_secs().saturating_add(self.inner.max_ttl_secs) {
            return Err(Refusal::Lifetime);
        }
        let exp = claims.exp;
        Ok((claims.principal(), exp))
    }

    /// The mode and, in identity-provider mode, the provider's state, for `/readyz`.
    pub fn readiness(&self) -> serde_json::Value {
        match &self.inner.verifier {
            Verifier::SharedSecret(_) => serde_json::json!({"mode": "shared_secret"}),
            Verifier::Provider(provider) => provider.readiness(),
        }
    }

    /// What the pages need to sign in, as they read it from their
    /// `feedback-auth` meta tag.
    pub fn page_config(&self) -> serde_json::Value {
        match &self.inner.verifier {
            Verifier::SharedSecret(_) => serde_json::json!({"mode": "secret"}),
            Verifier::Provider(provider) => serde_json::json!({
                "mode": "oidc",
                "issuer": provider.issuer(),
                "client_id": self.inner.client_id,
            }),
        }
    }

    /// The provider's origin (`https://login.example.edu`), which the pages
    /// call for its discovery document and tokens; `None` in shared-secret mode.
    pub fn provider_origin(&self) -> Option<String> {
        match &self.inner.verifier {
            Verifier::SharedSecret(_) => None,
            Verifier::Provider(provider) => reqwest::Url::parse(provider.issuer())
                .ok()
                .map(|url| url.origin().ascii_serialization()),
        }
    }
}

/// Why a token's header did not parse: an algorithm jsonwebtoken does not
/// know (`none`, say) is told apart from a token that is not a JWT at all.
fn header_refusal(token: &str) -> Refusal {
    use base64::Engine;
    let alg = token
        .split('.')
        .next()
        .and_then(|part| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|header| header.get("alg").cloned());
    match alg {
        Some(_) => Refusal::Algorithm,
        None => Refusal::Malformed,
    }
}

/// What both modes check besides the signature.
fn base_validation(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "sub"]);
    validation.leeway = LEEWAY_SECS;
    // A token that says it is not valid yet (RFC 7519 `nbf`) is not, though
    // the contract requires only `exp`.
    validation.validate_nbf = true;
    validation
}

fn now_secs() -> u64 {
    time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

#[cfg(test)]
mod tests;
