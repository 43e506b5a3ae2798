//! HS256 JWT: verification for ingest (students) and query (admins), minting
//! for the dev CLI, the demo and tests.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::http::ApiError;

/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Student,
    Admin,
    /// Any other role a correctly signed token names (`teacher`, say): an
    /// authentic token with the wrong role, so 403 rather than 401.
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The student or admin id. For students it becomes a `student_key` and goes no further.
    pub sub: String,
    pub role: Role,
    /// Expiry, seconds since the epoch; required.
    pub exp: u64,
}

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
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        // A token that says it is not valid yet (RFC 7519 `nbf`) is not,
        // though the contract requires only `exp`.
        validation.validate_nbf = true;
        // The contract names no audience: a token that carries one (an
        // identity provider's, say) is judged on the claims it does name.
        validation.validate_aud = false;
        Ok(Self {
            decoding: DecodingKey::from_secret(secret),
            encoding: EncodingKey::from_secret(secret),
            validation,
        })
    }

    /// Checks signature, algorithm, expiry and claim shapes.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|err| ApiError::unauthorized(format!("invalid token: {err}")))?;
        if data.claims.sub.trim().is_empty() {
            return Err(ApiError::unauthorized("invalid token: empty sub"));
        }
        Ok(data.claims)
    }

    /// Verifies the bearer token in `headers` and requires `role`.
    pub fn authorize(&self, headers: &HeaderMap, role: Role) -> Result<Claims, ApiError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer token"))?;
        let token = value
            .to_str()
            .ok()
            // The scheme is case-insensitive (RFC 9110 §11.1): `BEARER x` too.
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?;
        let claims = self.verify(token)?;
        if claims.role != role {
            let wanted = match role {
                Role::Student => "student",
                Role::Admin => "admin",
                Role::Other => "a known",
            };
            return Err(ApiError::forbidden(format!("this needs the {wanted} role")));
        }
        Ok(claims)
    }

    /// Signs a token for `sub` with `role`, valid for `ttl_secs`.
    pub fn mint(&self, sub: &str, role: Role, ttl_secs: u64) -> String {
        let exp = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64 + ttl_secs;
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing does not fail")
    }
}

/// Extracts a verified admin; 401 or 403 otherwise.
pub struct Admin(pub Claims);

impl<S> FromRequestParts<S> for Admin
where
    Arc<JwtKeys>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let keys = Arc::<JwtKeys>::from_ref(state);
        keys.authorize(&parts.headers, Role::Admin).map(Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn bearer(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    /// `claims` signed with the tests' secret, HS256.
    fn signed(claims: &impl Serialize) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn status(result: Result<Claims, ApiError>) -> StatusCode {
        result.map(|_| StatusCode::OK).unwrap_or_else(|e| e.status)
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(JwtKeys::new(b"short").is_err());
    }

    #[test]
    fn the_auth_matrix_holds() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let student = keys.mint("alice", Role::Student, 60);
        let admin = keys.mint("root", Role::Admin, 60);
        assert_eq!(
            status(keys.authorize(&bearer(&student), Role::Student)),
            StatusCode::OK
        );
        assert_eq!(
            status(keys.authorize(&bearer(&admin), Role::Student)),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(keys.authorize(&bearer(&student), Role::Admin)),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(keys.authorize(&HeaderMap::new(), Role::Admin)),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(keys.authorize(&bearer("garbage"), Role::Admin)),
            StatusCode::UNAUTHORIZED
        );

        let other = JwtKeys::new(b"another-secret-of-thirty-two-bytes!").unwrap();
        let forged = other.mint("alice", Role::Student, 60);
        assert_eq!(
            status(keys.authorize(&bearer(&forged), Role::Student)),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_other_schemes_are_refused() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let token = keys.mint("alice", Role::Student, 60);
        let with = |value: String| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            status(keys.authorize(&headers, Role::Student))
        };
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            assert_eq!(
                with(format!("{scheme} {token}")),
                StatusCode::OK,
                "{scheme}"
            );
        }
        assert_eq!(with(format!("Bearer  {token} ")), StatusCode::OK);
        for value in [format!("Basic {token}"), token.clone(), "Bearer ".into()] {
            assert_eq!(with(value.clone()), StatusCode::UNAUTHORIZED, "{value}");
        }
    }

    #[test]
    fn an_audience_the_contract_does_not_name_is_not_held_against_a_token() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let claims =
            serde_json::json!({"sub": "a", "role": "admin", "exp": now + 60, "aud": "sso"});
        let token = signed(&claims);
        assert_eq!(
            status(keys.authorize(&bearer(&token), Role::Admin)),
            StatusCode::OK
        );
    }

    #[test]
    fn a_token_not_valid_yet_is_refused() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let with_nbf = |nbf: u64| {
            let claims =
                serde_json::json!({"sub": "a", "role": "admin", "exp": now + 7200, "nbf": nbf});
            let token = signed(&claims);
            status(keys.authorize(&bearer(&token), Role::Admin))
        };
        assert_eq!(with_nbf(now + 3600), StatusCode::UNAUTHORIZED);
        assert_eq!(with_nbf(now - 10), StatusCode::OK);
    }

    #[test]
    fn expired_tokens_and_tokens_without_exp_are_refused() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let expired = Claims {
            sub: "a".into(),
            role: Role::Student,
            exp: now - 120,
        };
        let token = signed(&expired);
        assert_eq!(
            status(keys.authorize(&bearer(&token), Role::Student)),
            StatusCode::UNAUTHORIZED
        );

        let no_exp = serde_json::json!({"sub": "a", "role": "student"});
        let token = signed(&no_exp);
        assert_eq!(
            status(keys.authorize(&bearer(&token), Role::Student)),
            StatusCode::UNAUTHORIZED
        );

        let empty_sub = serde_json::json!({"sub": " ", "role": "student", "exp": now + 60});
        let token = signed(&empty_sub);
        assert_eq!(
            status(keys.authorize(&bearer(&token), Role::Student)),
            StatusCode::UNAUTHORIZED
        );

        // A signed token with a role the service does not know is authentic
        // but has the wrong role: 403. Without a role it is not a token of
        // this service at all: 401.
        for (role, expected) in [
            (serde_json::json!("teacher"), StatusCode::FORBIDDEN),
            (serde_json::json!("Student"), StatusCode::FORBIDDEN),
            (serde_json::json!(7), StatusCode::UNAUTHORIZED),
        ] {
            let claims = serde_json::json!({"sub": "a", "role": role, "exp": now + 60});
            let token = signed(&claims);
            assert_eq!(
                status(keys.authorize(&bearer(&token), Role::Student)),
                expected,
                "{role}"
            );
        }
        let no_role = serde_json::json!({"sub": "a", "exp": now + 60});
        let token = signed(&no_role);
        assert_eq!(
            status(keys.authorize(&bearer(&token), Role::Student)),
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn other_algorithms_are_refused() {
        let keys = JwtKeys::new(SECRET).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
        let claims = Claims {
            sub: "a".into(),
            role: Role::Student,
            exp: now + 60,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            status(keys.authorize(&bearer(&token), Role::Student)),
            StatusCode::UNAUTHORIZED
        );
    }
}
