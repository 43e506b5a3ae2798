//! Identity-provider mode against the real provider of `scripts/infra.sh`:
//! tokens from its login flow accepted with their roles, its key rotation
//! followed without a restart, and every kind of bad token refused alike.
//! Each test has a realm of its own (`feedback_tests::idp::Realm`).

use std::time::Duration;

use feedback_tests::idp::{signed_with_test_key, Realm, AUDIENCE};
use feedback_tests::ingest::TestIngest;
use feedback_tests::query::{fresh_stores, TestQuery};
use feedback_tests::{error_of, fresh_topic, temp_dir};
use jsonwebtoken::Algorithm;
use reqwest::StatusCode;
use serde_json::{json, Value};

const STUDENT_KEY_SECRET: &str = "identity-test-student-key-secret-0123456789";

async fn ingest_for(settings: shared::auth::Settings) -> TestIngest {
    let topic = fresh_topic()
        .await
        .expect("a topic (is scripts/infra.sh up?)");
    let mut config = feedback_tests::ingest::config(&topic, temp_dir("idp-spool"));
    config.auth = settings;
    config.student_key_secret = STUDENT_KEY_SECRET.as_bytes().to_vec();
    TestIngest::spawn_with(config).await
}

async fn query_for(settings: shared::auth::Settings) -> TestQuery {
    let (mysql_url, redis_url) = fresh_stores().await;
    let mut config = feedback_tests::query::config(&mysql_url, &redis_url);
    config.auth = settings;
    TestQuery::spawn_with(config).await
}

fn header_of(token: &str) -> jsonwebtoken::Header {
    jsonwebtoken::decode_header(token).unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn tokens_from_the_providers_login_flow_are_accepted_for_their_role_only() {
    let realm = Realm::create().await;
    let ingest = ingest_for(realm.settings()).await;
    let query = query_for(realm.settings()).await;
    let student = realm.sign_in("student", "student").await;
    let instructor = realm.sign_in("instructor", "instructor").await;
    let admin = realm.sign_in("admin", "admin").await;
    assert_eq!(header_of(&student).alg, Algorithm::RS256);

    let body = json!({"course_id": "CS101", "rating": 5, "comment": "clear"});
    let accepted = ingest.post(&student, &body).await;
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    for staff in [&instructor, &admin] {
        let refused = ingest.post(staff, &body).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(error_of(refused).await["code"], "forbidden");
    }

    let stats = "/v1/courses/CS101/stats";
    assert_eq!(
        query.get_as(stats, Some(&admin)).await.status(),
        StatusCode::OK
    );
    let refused = query.get_as(stats, Some(&student)).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_of(refused).await["code"], "forbidden");
    let not_theirs = query.get_as(stats, Some(&instructor)).await;
    assert_eq!(not_theirs.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_of(not_theirs).await["code"], "not_your_course");

    // The pages sign in at this provider: its settings in, its origin the
    // one place besides their own they may call.
    let auth = json!({"mode": "oidc", "issuer": realm.issuer, "client_id": "feedback-pages"});
    feedback_tests::assert_page_is_served_self_contained(
        &ingest.url,
        "/",
        &auth,
        &["/form.js", "/form.css", "/oidc.js"],
        &["code_challenge"],
    )
    .await;
    feedback_tests::assert_page_is_served_self_contained(
        &query.url,
        "/admin",
        &auth,
        &["/admin.js", "/admin.css", "/oidc.js"],
        &["end_session_endpoint"],
    )
    .await;
    let csp = query
        .client
        .get(format!("{}/admin", query.url))
        .send()
        .await
        .unwrap()
        .headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains(&format!(
            "connect-src 'self' {};",
            feedback_tests::idp::keycloak_url()
        )),
        "{csp}"
    );

    // Both services show the provider they trust on /readyz.
    let ready = ingest.readyz().await.unwrap();
    assert_eq!(ready["checks"]["identity"]["state"], "up", "{ready}");
    assert_eq!(ready["checks"]["identity"]["issuer"], realm.issuer.as_str());
    ingest.shutdown().await;
    query.shutdown().await;
    realm.delete().await;
}

#[tokio::test]
async fn a_key_rotated_on_the_provider_is_accepted_without_a_restart() {
    let realm = Realm::create().await;
    let query = query_for(realm.settings()).await;
    let first = realm.sign_in("admin", "admin").await;
    let stats = "/v1/courses/CS101/stats";
    assert_eq!(
        query.get_as(stats, Some(&first)).await.status(),
        StatusCode::OK
    );

    let rotated_kid = realm.rotate_key("RS256").await;
    let rotated = realm.sign_in("admin", "admin").await;
    assert_eq!(
        header_of(&rotated).kid.as_deref(),
        Some(rotated_kid.as_str())
    );
    assert_ne!(header_of(&rotated).kid, header_of(&first).kid);
    assert_eq!(
        query.get_as(stats, Some(&rotated)).await.status(),
        StatusCode::OK
    );

    // Then to ES256. The service asks the provider again at most once per
    // 10 s on behalf of unknown keys, so this one may wait that long.
    let ec_kid = realm.rotate_key("ES256").await;
    let ec = realm.sign_in("admin", "admin").await;
    assert_eq!(header_of(&ec).alg, Algorithm::ES256);
    assert_eq!(header_of(&ec).kid.as_deref(), Some(ec_kid.as_str()));
    feedback_tests::eventually(
        Duration::from_secs(15),
        "the ES256 key accepted",
        || async {
            Ok((query.get_as(stats, Some(&ec)).await.status() == StatusCode::OK).then_some(()))
        },
    )
    .await
    .unwrap();
    // The older keys still verify the tokens they signed.
    assert_eq!(
        query.get_as(stats, Some(&first)).await.status(),
        StatusCode::OK
    );
    query.shutdown().await;
    realm.delete().await;
}

#[tokio::test]
async fn every_bad_token_is_the_same_401_and_counted_by_reason() {
    let realm = Realm::create().await;
    let kid = realm.add_test_key().await;
    let query = query_for(realm.settings()).await;
    let ingest = ingest_for(realm.settings()).await;
    let claims = |changes: Value| {
        let mut claims = json!({"iss": realm.issuer, "aud": AUDIENCE, "sub": "test-admin",
            "exp": now() + 300, "roles": ["admin", "student"]});
        claims
            .as_object_mut()
            .unwrap()
            .extend(changes.as_object().unwrap().clone());
        claims
    };
    let stats = "/v1/courses/CS101/stats";
    // The test key's tokens pass when nothing is wrong with them, so each
    // refusal below is for the one thing changed.
    let good = signed_with_test_key(&kid, Algorithm::RS256, &claims(json!({})));
    assert_eq!(
        query.get_as(stats, Some(&good)).await.status(),
        StatusCode::OK
    );

    let hs256 = {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        // Signed with the provider's public key as an HMAC secret: the old
        // algorithm-confusion attack.
        let jwks = reqwest::get(format!("{}/protocol/openid-connect/certs", realm.issuer))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        jsonwebtoken::encode(
            &header,
            &claims(json!({})),
            &jsonwebtoken::EncodingKey::from_secret(jwks.as_bytes()),
        )
        .unwrap()
    };
    let none = {
        use base64::Engine;
        let b64 =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "kid": kid})),
            b64(&claims(json!({})))
        )
    };
    let bad = [
        (
            "issuer",
            signed_with_test_key(
                &kid,
                Algorithm::RS256,
                &claims(json!({"iss": "https://elsewhere.example/realms/x"})),
            ),
        ),
        (
            "audience",
            signed_with_test_key(&kid, Algorithm::RS256, &claims(json!({"aud": "account"}))),
        ),
        (
            "expired",
            signed_with_test_key(&kid, Algorithm::RS256, &claims(json!({"exp": now() - 120}))),
        ),
        (
            "lifetime",
            signed_with_test_key(
                &kid,
                Algorithm::RS256,
                &claims(json!({"exp": now() + 2 * 86_400})),
            ),
        ),
        ("algorithm", hs256),
        ("algorithm", none),
        (
            "unknown_key",
            signed_with_test_key(
                "not-a-kid-of-the-provider",
                Algorithm::RS256,
                &claims(json!({})),
            ),
        ),
        ("missing", String::new()),
    ];
    let mut answers = std::collections::HashSet::new();
    for (reason, token) in &bad {
        let token = (!token.is_empty()).then_some(token.as_str());
        for response in [query.get_as(stats, token).await, {
            let mut request = ingest
                .client
                .post(format!("{}/v1/feedback", ingest.url))
                .json(&json!({"course_id": "CS101", "rating": 3}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap()
        }] {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{reason}");
            answers.insert(error_of(response).await.to_string());
        }
    }
    assert_eq!(answers.len(), 1, "one answer whatever failed: {answers:?}");
    let answer: Value = serde_json::from_str(answers.iter().next().unwrap()).unwrap();
    assert_eq!(answer["code"], "invalid_token");

    let metrics = query
        .client
        .get(format!("{}/metrics", query.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, _) in &bad {
        let line = format!("auth_tokens_refused_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "no {line} in /metrics");
    }
    ingest.shutdown().await;
    query.shutdown().await;
    realm.delete().await;
}

/// The provider's own tokens, judged by services set up otherwise: another
/// audience, or a shorter longest lifetime than the provider's 5 minutes.
#[tokio::test]
async fn the_providers_tokens_are_refused_for_another_audience_or_too_long_a_life() {
    let realm = Realm::create().await;
    let other_audience = query_for(realm.settings_for(&realm.issuer, "another-api")).await;
    let mut short = realm.settings();
    short.max_ttl_secs = 60;
    let short_lived = query_for(short).await;
    let admin = realm.sign_in("admin", "admin").await;
    for query in [&other_audience, &short_lived] {
        let response = query.get_as("/v1/courses/CS101/stats", Some(&admin)).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(error_of(response).await["code"], "invalid_token");
    }
    other_audience.shutdown().await;
    short_lived.shutdown().await;
    realm.delete().await;
}
