//! Shared-secret mode: HS256 with `FEEDBACK_JWT_SECRET`, for development,
//! tests and quick trials. The same secret signs (`mint-token`, the demo,
//! the tests) and verifies.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use super::{Claims, Role};

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The keys and rules for one secret.
pub struct JwtKeys {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl JwtKeys {
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_LEN,
            "FEEDBACK_JWT_SECRET must be at least {MIN_SECRET_LEN} bytes"
        );
        Ok(Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation: Self::make_validation(),
        })
    }

    pub(super) fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    /// HS256 only. The contract names no audience in this mode: a token that
    /// carries one (an identity provider's, say) is judged on the claims it
    /// does name.
    fn make_validation() -> Validation {
        let mut validation = super::base_validation(Algorithm::HS256);
        validation.validate_aud = false;
        validation
    }

    pub(super) fn validation(&self) -> &Validation {
        &self.validation
    }

    /// Signs a token for `sub` with `role`, valid for `ttl_secs`.
    pub fn mint(&self, sub: &str, role: Role, ttl_secs: u64) -> String {
        let exp = super::now_secs() + ttl_secs;
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp,
        };
        self.sign(&claims)
    }

    /// Signs any claims, HS256: the tests' odd tokens.
    pub fn sign(&self, claims: &impl serde::Serialize) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing does not fail")
    }
}
