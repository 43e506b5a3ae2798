//! Both modes against made-up tokens. Identity-provider mode runs against a
//! stand-in provider on the loopback (discovery and JWKS, keys of
//! `shared/testdata`), which the tests can rotate and take down; the real
//! provider's turn is in the integration tests.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use super::*;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const RSA_PEM: &[u8] = include_bytes!("../../testdata/test-only-rsa.pem");
const EC_PEM: &[u8] = include_bytes!("../../testdata/test-only-ec.pem");
const AUDIENCE: &str = "feedback-api";

fn now() -> u64 {
    now_secs()
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    headers
}

fn secret_mode() -> Authenticator {
    Authenticator::new(&Settings::shared_secret(SECRET)).unwrap()
}

fn hs256(claims: &serde_json::Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

async fn status(auth: &Authenticator, token: &str, allowed: &[Role]) -> StatusCode {
    match auth.require(&bearer(token), allowed).await {
        Ok(_) => StatusCode::OK,
        Err(err) => err.status,
    }
}

#[test]
fn short_secrets_are_refused() {
    assert!(JwtKeys::new(b"short").is_err());
}

#[tokio::test]
async fn the_role_matrix_holds_in_shared_secret_mode() {
    let auth = secret_mode();
    let keys = JwtKeys::new(SECRET.as_bytes()).unwrap();
    let student = keys.mint("alice", Role::Student, 60);
    let instructor = keys.mint("ivan", Role::Instructor, 60);
    let admin = keys.mint("root", Role::Admin, 60);
    let readers = [Role::Instructor, Role::Admin];
    assert_eq!(
        status(&auth, &student, &[Role::Student]).await,
        StatusCode::OK
    );
    assert_eq!(
        status(&auth, &admin, &[Role::Student]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&auth, &instructor, &[Role::Student]).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        status(&auth, &student, &readers).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(status(&auth, &instructor, &readers).await, StatusCode::OK);
    assert_eq!(status(&auth, &admin, &readers).await, StatusCode::OK);
    let no_role = hs256(
        &serde_json::json!({"sub": "a", "exp": now() + 60}),
        SECRET.as_bytes(),
    );
    assert_eq!(
        status(&auth, &no_role, &readers).await,
        StatusCode::FORBIDDEN
    );
    let roles = hs256(
        &serde_json::json!({"sub": "a", "exp": now() + 60, "roles": ["offline_access", "student", "admin"]}),
        SECRET.as_bytes(),
    );
    let principal = auth.authenticate(&bearer(&roles)).await.unwrap();
    assert_eq!(
        principal,
        Principal {
            sub: "a".into(),
            role: Some(Role::Admin)
        }
    );
}

#[tokio::test]
async fn every_refusal_is_the_same_401_whatever_failed() {
    let auth = secret_mode();
    let other = JwtKeys::new(b"another-secret-of-thirty-two-bytes!").unwrap();
    let cases: Vec<(HeaderMap, Refusal)> = vec![
        (HeaderMap::new(), Refusal::Missing),
        (bearer("garbage"), Refusal::Malformed),
        (
            bearer(&other.mint("alice", Role::Student, 60)),
            Refusal::Signature,
        ),
        (
            bearer(&hs256(
                &serde_json::json!({"sub": "a", "role": "admin", "exp": now() - 120}),
                SECRET.as_bytes(),
            )),
            Refusal::Expired,
        ),
        (
            bearer(&hs256(
                &serde_json::json!({"sub": "a", "role": "admin"}),
                SECRET.as_bytes(),
            )),
            Refusal::Claims,
        ),
        (
            bearer(&hs256(
                &serde_json::json!({"sub": " ", "role": "admin", "exp": now() + 60}),
                SECRET.as_bytes(),
            )),
            Refusal::Claims,
        ),
        (
            bearer(&hs256(
                &serde_json::json!({"sub": "a", "role": 7, "exp": now() + 60}),
                SECRET.as_bytes(),
            )),
            Refusal::Claims,
        ),
        (
            bearer(&hs256(
                &serde_json::json!({"sub": "a", "role": "admin", "exp": now() + 7200, "nbf": now() + 3600}),
                SECRET.as_bytes(),
            )),
            Refusal::NotYetValid,
        ),
        (
            bearer(&hs256(
                &serde_json::json!({"sub": "a", "role": "admin", "exp": now() + DEFAULT_MAX_TTL_SECS + 60}),
                SECRET.as_bytes(),
            )),
            Refusal::Lifetime,
        ),
        (
            bearer(&unsigned(
                &serde_json::json!({"sub": "a", "role": "admin", "exp": now() + 60}),
            )),
            Refusal::Algorithm,
        ),
    ];
    let mut answers = std::collections::HashSet::new();
    for (headers, reason) in cases {
        assert_eq!(
            auth.verify_headers(&headers).await.unwrap_err(),
            reason,
            "{headers:?}"
        );
        let answer = auth.authenticate(&headers).await.unwrap_err();
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        answers.insert((answer.code, answer.message));
    }
    assert_eq!(
        answers.into_iter().collect::<Vec<_>>(),
        [("invalid_token", INVALID_TOKEN_MESSAGE.to_owned())]
    );
}

#[tokio::test]
async fn the_scheme_is_case_insensitive_and_other_schemes_are_refused() {
    let auth = secret_mode();
    let token = JwtKeys::new(SECRET.as_bytes())
        .unwrap()
        .mint("alice", Role::Student, 60);
    let with = |value: String| {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, value.parse().unwrap());
        headers
    };
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        assert!(
            auth.authenticate(&with(format!("{scheme} {token}")))
                .await
                .is_ok(),
            "{scheme}"
        );
    }
    assert!(auth
        .authenticate(&with(format!("Bearer  {token} ")))
        .await
        .is_ok());
    for value in [format!("Basic {token}"), token.clone(), "Bearer ".into()] {
        assert_eq!(
            auth.verify_headers(&with(value.clone())).await.unwrap_err(),
            Refusal::Malformed,
            "{value}"
        );
    }
}

#[tokio::test]
async fn shared_secret_mode_takes_hs256_only_and_ignores_an_audience() {
    let auth = secret_mode();
    let claims = serde_json::json!({"sub": "a", "role": "admin", "exp": now() + 60, "aud": "sso"});
    assert!(auth
        .verify(&hs256(&claims, SECRET.as_bytes()))
        .await
        .is_ok());
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    assert_eq!(auth.verify(&hs512).await.unwrap_err(), Refusal::Algorithm);
    let rs256 = sign_rsa("k1", &claims);
    assert_eq!(auth.verify(&rs256).await.unwrap_err(), Refusal::Algorithm);
}

/// `{"alg": "none"}`, no signature.
fn unsigned(claims: &serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.",
        b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

fn sign_rsa(kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(RSA_PEM).unwrap(),
    )
    .unwrap()
}

fn sign_ec(kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(EC_PEM).unwrap()).unwrap()
}

fn public_jwk(kid: &str, alg: Algorithm) -> serde_json::Value {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_PEM).unwrap(),
        _ => EncodingKey::from_ec_pem(EC_PEM).unwrap(),
    };
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&key, alg).unwrap()).unwrap();
    jwk["kid"] = kid.into();
    jwk["use"] = "sig".into();
    jwk
}

/// A stand-in identity provider: discovery and JWKS on the loopback.
#[derive(Clone)]
struct FakeProvider {
    issuer: String,
    keys: Arc<Mutex<Vec<serde_json::Value>>>,
    down: Arc<AtomicBool>,
    jwks_fetches: Arc<AtomicUsize>,
}

impl FakeProvider {
    async fn start(keys: Vec<serde_json::Value>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}/realms/test", listener.local_addr().unwrap());
        let fake = Self {
            issuer,
            keys: Arc::new(Mutex::new(keys)),
            down: Arc::default(),
            jwks_fetches: Arc::default(),
        };
        async fn discovery(State(fake): State<FakeProvider>) -> Response {
            if fake.down.load(Ordering::SeqCst) {
                return StatusCode::BAD_GATEWAY.into_response();
            }
            Json(serde_json::json!({
                "issuer": fake.issuer,
                "jwks_uri": format!("{}/protocol/openid-connect/certs", fake.issuer),
            }))
            .into_response()
        }
        async fn jwks(State(fake): State<FakeProvider>) -> Response {
            fake.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            if fake.down.load(Ordering::SeqCst) {
                return StatusCode::BAD_GATEWAY.into_response();
            }
            Json(serde_json::json!({"keys": *fake.keys.lock().unwrap()})).into_response()
        }
        let app = axum::Router::new()
            .route(
                "/realms/test/.well-known/openid-configuration",
                get(discovery),
            )
            .route("/realms/test/protocol/openid-connect/certs", get(jwks))
            .with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    fn settings(&self, max_ttl_secs: u64) -> Settings {
        Settings {
            mode: Mode::IdentityProvider {
                issuer: self.issuer.clone(),
                audience: AUDIENCE.into(),
                client_id: Some("feedback-pages".into()),
                ca_file: None,
            },
            max_ttl_secs,
        }
    }

    fn claims(&self, role: &str) -> serde_json::Value {
        serde_json::json!({"iss": self.issuer, "aud": ["account", AUDIENCE], "sub": "u-1",
            "exp": now() + 300, "roles": [role, "offline_access"]})
    }

    /// The service's authenticator, once it holds the provider's keys.
    async fn authenticator(&self, max_ttl_secs: u64) -> Authenticator {
        let auth = Authenticator::new(&self.settings(max_ttl_secs)).unwrap();
        for _ in 0..200 {
            if auth.readiness()["state"] == "up" {
                return auth;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no keys from the stand-in provider: {}", auth.readiness());
    }
}

#[tokio::test]
async fn provider_tokens_of_both_algorithms_are_accepted_with_their_roles() {
    let fake = FakeProvider::start(vec![
        public_jwk("rsa-1", Algorithm::RS256),
        public_jwk("ec-1", Algorithm::ES256),
    ])
    .await;
    let auth = fake.authenticator(DEFAULT_MAX_TTL_SECS).await;
    let rs = auth
        .verify(&sign_rsa("rsa-1", &fake.claims("student")))
        .await
        .unwrap();
    assert_eq!(
        rs,
        Principal {
            sub: "u-1".into(),
            role: Some(Role::Student)
        }
    );
    let es = auth
        .verify(&sign_ec("ec-1", &fake.claims("admin")))
        .await
        .unwrap();
    assert_eq!(es.role, Some(Role::Admin));
    let readiness = auth.readiness();
    assert_eq!(readiness["keys"], 2, "{readiness}");
    assert_eq!(
        auth.page_config(),
        serde_json::json!({"mode": "oidc", "issuer": fake.issuer, "client_id": "feedback-pages"})
    );
}

#[tokio::test]
async fn provider_tokens_failing_any_check_are_refused_for_that_reason() {
    let fake = FakeProvider::start(vec![
        public_jwk("rsa-1", Algorithm::RS256),
        public_jwk("ec-1", Algorithm::ES256),
    ])
    .await;
    let auth = fake.authenticator(600).await;
    let good = fake.claims("student");
    let with = |key: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[key] = value;
        claims
    };
    let public_pem = {
        // The classic confusion: the provider's public key used as an HMAC secret.
        let jwk = public_jwk("rsa-1", Algorithm::RS256);
        jwk.to_string().into_bytes()
    };
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("rsa-1".into());
    let hs256_with_kid =
        jsonwebtoken::encode(&hs_header, &good, &EncodingKey::from_secret(&public_pem)).unwrap();
    let cases = [
        (
            sign_rsa(
                "rsa-1",
                &with("iss", "https://elsewhere.example/realms/test".into()),
            ),
            Refusal::Issuer,
        ),
        (
            sign_rsa("rsa-1", &with("aud", "other-api".into())),
            Refusal::Audience,
        ),
        (
            sign_rsa("rsa-1", &with("exp", (now() - 120).into())),
            Refusal::Expired,
        ),
        (
            sign_rsa("rsa-1", &with("exp", (now() + 3600).into())),
            Refusal::Lifetime,
        ),
        (hs256_with_kid, Refusal::Algorithm),
        (unsigned(&good), Refusal::Algorithm),
        // An RSA key's kid on an ES256 token: the key decides the algorithm.
        (sign_ec("rsa-1", &good), Refusal::Algorithm),
        (sign_ec("ec-1", &with("sub", "".into())), Refusal::Claims),
        (
            {
                let mut no_iss = good.clone();
                no_iss.as_object_mut().unwrap().remove("iss");
                sign_rsa("rsa-1", &no_iss)
            },
            Refusal::Claims,
        ),
        (
            {
                let mut header = Header::new(Algorithm::RS256);
                header.kid = None;
                jsonwebtoken::encode(&header, &good, &EncodingKey::from_rsa_pem(RSA_PEM).unwrap())
                    .unwrap()
            },
            Refusal::UnknownKey,
        ),
    ];
    for (token, reason) in cases {
        assert_eq!(auth.verify(&token).await.unwrap_err(), reason);
    }
    // A token signed by the RSA key but naming the EC key's kid: a bad signature.
    let tampered = sign_rsa("ec-1", &good);
    assert_eq!(
        auth.verify(&tampered).await.unwrap_err(),
        Refusal::Algorithm
    );
    // One signature character changed, well inside it (the last one carries
    // padding bits a lenient decoder ignores).
    let mut forged = sign_ec("ec-1", &good).into_bytes();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(auth.verify(&forged).await.unwrap_err(), Refusal::Signature);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_and_unknown_kids_do_not_storm_the_provider() {
    let fake = FakeProvider::start(vec![public_jwk("old", Algorithm::RS256)]).await;
    let auth = fake.authenticator(DEFAULT_MAX_TTL_SECS).await;
    let at_start = fake.jwks_fetches.load(Ordering::SeqCst);

    // The provider rotates to a new key: the first token naming it brings it.
    fake.keys
        .lock()
        .unwrap()
        .push(public_jwk("new", Algorithm::ES256));
    let principal = auth
        .verify(&sign_ec("new", &fake.claims("instructor")))
        .await
        .unwrap();
    assert_eq!(principal.role, Some(Role::Instructor));
    assert_eq!(fake.jwks_fetches.load(Ordering::SeqCst), at_start + 1);

    // Made-up kids within the interval: refused without asking again.
    for i in 0..20 {
        let token = sign_rsa(&format!("made-up-{i}"), &fake.claims("student"));
        assert_eq!(auth.verify(&token).await.unwrap_err(), Refusal::UnknownKey);
    }
    assert_eq!(fake.jwks_fetches.load(Ordering::SeqCst), at_start + 1);
    // Held keys never wait on the provider.
    assert!(auth
        .verify(&sign_rsa("old", &fake.claims("student")))
        .await
        .is_ok());
}

#[tokio::test]
async fn while_the_provider_is_down_held_keys_work_and_unknown_kids_are_refused_fast() {
    let fake = FakeProvider::start(vec![public_jwk("k", Algorithm::RS256)]).await;
    let auth = fake.authenticator(DEFAULT_MAX_TTL_SECS).await;
    fake.down.store(true, Ordering::SeqCst);
    assert!(auth
        .verify(&sign_rsa("k", &fake.claims("student")))
        .await
        .is_ok());
    let started = std::time::Instant::now();
    let unknown = sign_rsa("rotated", &fake.claims("student"));
    assert_eq!(
        auth.verify(&unknown).await.unwrap_err(),
        Refusal::UnknownKey
    );
    assert!(
        started.elapsed() < oidc::UNKNOWN_KID_INTERVAL,
        "{:?}",
        started.elapsed()
    );
    let readiness = auth.readiness();
    assert_eq!(readiness["state"], "down", "{readiness}");
    assert_eq!(readiness["keys"], 1, "{readiness}");
    // Still held after the failed fetch.
    assert!(auth
        .verify(&sign_rsa("k", &fake.claims("student")))
        .await
        .is_ok());
}

#[tokio::test]
async fn a_provider_that_never_answered_leaves_every_token_refused_and_says_so() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let issuer = format!("http://{}/realms/none", listener.local_addr().unwrap());
    drop(listener);
    let settings = Settings {
        mode: Mode::IdentityProvider {
            issuer: issuer.clone(),
            audience: AUDIENCE.into(),
            client_id: None,
            ca_file: None,
        },
        max_ttl_secs: 600,
    };
    let auth = Authenticator::new(&settings).unwrap();
    let claims = serde_json::json!({"iss": issuer, "aud": AUDIENCE, "sub": "u", "exp": now() + 60, "role": "admin"});
    assert_eq!(
        auth.verify(&sign_rsa("k", &claims)).await.unwrap_err(),
        Refusal::UnknownKey
    );
    assert_eq!(auth.readiness()["state"], "down");
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_read_is_named_and_retried_not_fatal() {
    let fake = FakeProvider::start(vec![public_jwk("k", Algorithm::RS256)]).await;
    let missing = crate::auth::tests::missing_path();
    let mut settings = fake.settings(600);
    if let Mode::IdentityProvider { ca_file, .. } = &mut settings.mode {
        *ca_file = Some(missing.clone());
    }
    let auth = Authenticator::new(&settings).unwrap();
    let claims = fake.claims("admin");
    assert_eq!(
        auth.verify(&sign_rsa("k", &claims)).await.unwrap_err(),
        Refusal::UnknownKey
    );
    let readiness = auth.readiness();
    assert_eq!(readiness["state"], "down", "{readiness}");
    let error = readiness["last_error"].as_str().unwrap();
    assert!(error.contains("FEEDBACK_OIDC_CA_FILE"), "{error}");

    // The file appears (a front door's authority made on its first start):
    // the next fetch reads it, no restart. Any PEM certificate will do over plain HTTP.
    std::fs::write(&missing, TEST_CERT_PEM).unwrap();
    for _ in 0..100 {
        if auth.readiness()["state"] == "up" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        auth.verify(&sign_rsa("k", &claims)).await.is_ok(),
        "{}",
        auth.readiness()
    );
    let _ = std::fs::remove_file(&missing);
}

fn missing_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("feedback-ca-{}.pem", ulid::Ulid::new()))
}

/// A self-signed certificate of no one's: only its shape matters here.
const TEST_CERT_PEM: &[u8] = include_bytes!("../../testdata/test-only-ca.pem");

#[tokio::test]
async fn a_verified_token_is_cached_and_a_refused_one_never() {
    let auth = secret_mode();
    let token = hs256(
        &serde_json::json!({"sub": "u1", "role": "admin", "exp": now() + 600}),
        SECRET.as_bytes(),
    );
    let first = auth.verify(&token).await.unwrap();
    assert_eq!(auth.inner.verified.len(), 1);
    assert_eq!(auth.verify(&token).await.unwrap(), first);
    assert_eq!(auth.inner.verified.len(), 1);

    // One byte changed in the signature: a miss, checked in full, refused, not kept.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 2;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for _ in 0..2 {
        assert_eq!(auth.verify(&forged).await.unwrap_err(), Refusal::Signature);
    }
    let expired = hs256(
        &serde_json::json!({"sub": "u1", "role": "admin", "exp": now() - 60}),
        SECRET.as_bytes(),
    );
    assert_eq!(auth.verify(&expired).await.unwrap_err(), Refusal::Expired);
    assert_eq!(auth.inner.verified.len(), 1);
}

#[test]
fn a_cached_token_still_expires_at_its_exp_and_at_the_ttl() {
    use std::time::Duration;
    let principal = Principal {
        sub: "u1".into(),
        role: Some(Role::Student),
    };
    let cache = cache::TokenCache::with(LEEWAY_SECS, Duration::from_secs(60), 64);
    let key = cache::TokenCache::key("t");
    let now = now();
    cache.insert(key, principal.clone(), now + 10);
    assert_eq!(cache.get(&key, now), Some(principal.clone()));
    // Within the leeway after exp, as the full check allows; not beyond.
    assert!(cache.get(&key, now + 10 + LEEWAY_SECS).is_some());
    assert!(cache.get(&key, now + 11 + LEEWAY_SECS).is_none());
    assert_eq!(cache.len(), 0, "an expired entry is dropped");

    let short = cache::TokenCache::with(LEEWAY_SECS, Duration::from_millis(30), 64);
    short.insert(key, principal, now + 600);
    assert!(short.get(&key, now).is_some());
    std::thread::sleep(Duration::from_millis(40));
    assert!(
        short.get(&key, now).is_none(),
        "the TTL ends it whatever exp says"
    );
}

#[test]
fn the_cache_stays_within_its_capacity() {
    let cache = cache::TokenCache::with(LEEWAY_SECS, std::time::Duration::from_secs(60), 64);
    let now = now();
    for i in 0..10_000 {
        let principal = Principal {
            sub: format!("u{i}"),
            role: Some(Role::Student),
        };
        cache.insert(
            cache::TokenCache::key(&format!("t{i}")),
            principal,
            now + 600,
        );
    }
    assert!(cache.len() <= 64, "{}", cache.len());
    let last = cache::TokenCache::key("t9999");
    assert_eq!(cache.get(&last, now).unwrap().sub, "u9999");
}
