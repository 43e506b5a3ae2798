//! The real identity provider of `scripts/infra.sh` (Keycloak on
//! 127.0.0.1:8180) as the tests use it: each test gets a realm of its own,
//! made from the demo's `deploy/keycloak/feedback-realm.json` through the
//! admin API (so a test may rotate its keys), and deleted at the end.
//!
//! Tokens come from the provider the way the pages and the loader get them:
//! the authorization-code flow with PKCE, driven over HTTP through the
//! provider's own login form, or the password grant of `feedback-loader`.
//! A test key of `shared/testdata` can be added to a realm, so the tests can
//! sign tokens with claims the provider would never issue (expired, too
//! long, another issuer) under a `kid` the provider lists.

use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use serde_json::Value;
use sha2::Digest;

use crate::unique_name;

/// Where `scripts/infra.sh` runs the provider.
pub fn keycloak_url() -> String {
    std::env::var("FEEDBACK_TEST_KEYCLOAK_URL").unwrap_or_else(|_| "http://127.0.0.1:8180".into())
}

/// The audience the realm file's mappers put in `aud`.
pub const AUDIENCE: &str = "feedback-api";
/// The pages' public client, and a redirect URI the realm file allows it.
pub const PAGES_CLIENT: &str = "feedback-pages";
pub const REDIRECT_URI: &str = "http://127.0.0.1:8080/";

/// The test-only RSA key the tests may add to a realm.
pub const TEST_RSA_PEM: &str = include_str!("../../shared/testdata/test-only-rsa.pem");

/// A realm of the test's own on the real provider.
pub struct Realm {
    pub name: String,
    /// `http://127.0.0.1:8180/realms/<name>`: what the provider puts in `iss`.
    pub issuer: String,
    http: reqwest::Client,
}

impl Realm {
    /// A realm from the demo's realm file, without its sample students.
    pub async fn create() -> Self {
        Self::try_create()
            .await
            .expect("a realm on the identity provider (is scripts/infra.sh up?)")
    }

    async fn try_create() -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut realm: Value = serde_json::from_str(&with_defaults(include_str!(
            "../../deploy/keycloak/feedback-realm.json"
        )))?;
        let name = unique_name("fbtest").replace('_', "-");
        realm["realm"] = name.clone().into();
        realm.as_object_mut().unwrap().remove("id");
        if let Some(users) = realm["users"].as_array_mut() {
            users.retain(|u| !u["username"].as_str().unwrap_or("").starts_with("sample"));
            // Ids are unique across realms: the test realm's users get fresh ones.
            for user in users.iter_mut() {
                user.as_object_mut().unwrap().remove("id");
            }
        }
        let admin = admin_token(&http).await?;
        let response = http
            .post(format!("{}/admin/realms", keycloak_url()))
            .bearer_auth(&admin)
            .json(&realm)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "creating realm {name}: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
        let issuer = format!("{}/realms/{name}", keycloak_url());
        Ok(Self { name, issuer, http })
    }

    /// Identity-provider mode against this realm.
    pub fn settings(&self) -> shared::auth::Settings {
        self.settings_for(&self.issuer, AUDIENCE)
    }

    pub fn settings_for(&self, issuer: &str, audience: &str) -> shared::auth::Settings {
        shared::auth::Settings {
            mode: shared::auth::Mode::IdentityProvider {
                issuer: issuer.into(),
                audience: audience.into(),
                client_id: Some(PAGES_CLIENT.into()),
                ca_file: None,
            },
            max_ttl_secs: shared::auth::DEFAULT_MAX_TTL_SECS,
        }
    }

    /// An access token for `username` through the real authorization-code
    /// flow with PKCE: the pages' client, the provider's login form, the code
    /// exchanged at the token endpoint.
    pub async fn sign_in(&self, username: &str, password: &str) -> String {
        self.try_sign_in(username, password)
            .await
            .unwrap_or_else(|e| panic!("signing in as {username}: {e:#}"))
    }

    async fn try_sign_in(&self, username: &str, password: &str) -> anyhow::Result<String> {
        // A browser of its own: the login form keeps its session in cookies.
        let browser = reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()?;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let verifier = b64.encode(rand::random::<[u8; 32]>());
        let challenge = b64.encode(sha2::Sha256::digest(verifier.as_bytes()));
        let state = b64.encode(rand::random::<[u8; 16]>());
        let auth = format!("{}/protocol/openid-connect/auth", self.issuer);
        let page = browser
            .get(&auth)
            .query(&[
                ("response_type", "code"),
                ("client_id", PAGES_CLIENT),
                ("redirect_uri", REDIRECT_URI),
                ("scope", "openid"),
                ("state", &state),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ])
            .send()
            .await?;
        anyhow::ensure!(
            page.status().is_success(),
            "the login page: {}",
            page.status()
        );
        let html = page.text().await?;
        let action = login_form_action(&html).context("no login form on the provider's page")?;
        let answer = browser
            .post(action)
            .form(&[
                ("username", username),
                ("password", password),
                ("credentialId", ""),
            ])
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_redirection(),
            "the login form answered {} (wrong password, or a page asking for more)",
            answer.status()
        );
        let location = reqwest::Url::parse(answer.headers()["location"].to_str()?)?;
        anyhow::ensure!(
            location.as_str().starts_with(REDIRECT_URI),
            "redirected to {location}"
        );
        let param = |key: &str| {
            location
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        anyhow::ensure!(
            param("state").as_deref() == Some(state.as_str()),
            "state changed: {location}"
        );
        let code = param("code").with_context(|| format!("no code in {location}"))?;
        let tokens: Value = browser
            .post(format!("{}/protocol/openid-connect/token", self.issuer))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT_URI),
                ("client_id", PAGES_CLIENT),
                ("code_verifier", &verifier),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        tokens["access_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no access token in {tokens}"))
    }

    /// Adds a new generated signing key that outranks the others, as an
    /// operator rotating keys does: RS256 (`rsa-generated`) or ES256
    /// (`ecdsa-generated`, made the realm's default algorithm). Returns its `kid`.
    pub async fn rotate_key(&self, alg: &str) -> String {
        let (provider, extra) = match alg {
            "ES256" => (
                "ecdsa-generated",
                serde_json::json!({"ecdsaEllipticCurveKey": ["P-256"]}),
            ),
            _ => ("rsa-generated", serde_json::json!({"keySize": ["2048"]})),
        };
        let mut config =
            serde_json::json!({"priority": ["1000"], "enabled": ["true"], "active": ["true"]});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let id = self
            .add_key_provider(&format!("rotated-{alg}"), provider, config)
            .await;
        if alg == "ES256" {
            self.admin(
                reqwest::Method::PUT,
                "",
                Some(serde_json::json!({"defaultSignatureAlgorithm": "ES256"})),
            )
            .await;
        }
        self.kid_of(&id, alg).await
    }

    /// Adds the test-only RSA key, ranked below the realm's own (the
    /// provider goes on signing with its key; the JWKS lists both). Returns its `kid`.
    pub async fn add_test_key(&self) -> String {
        let config = serde_json::json!({"priority": ["1"], "enabled": ["true"], "active": ["true"],
            "privateKey": [TEST_RSA_PEM], "algorithm": ["RS256"]});
        let id = self.add_key_provider("test-only-rsa", "rsa", config).await;
        self.kid_of(&id, "RS256").await
    }

    async fn add_key_provider(&self, name: &str, provider: &str, config: Value) -> String {
        let realm = self.admin(reqwest::Method::GET, "", None).await;
        let component = serde_json::json!({
            "name": name,
            "providerId": provider,
            "providerType": "org.keycloak.keys.KeyProvider",
            "parentId": realm["id"],
            "config": config,
        });
        let admin = admin_token(&self.http).await.expect("an admin token");
        let response = self
            .http
            .post(format!(
                "{}/admin/realms/{}/components",
                keycloak_url(),
                self.name
            ))
            .bearer_auth(admin)
            .json(&component)
            .send()
            .await
            .expect("the admin API answers");
        assert!(
            response.status().is_success(),
            "adding {name}: {}",
            response.status()
        );
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        location.rsplit('/').next().unwrap().to_owned()
    }

    async fn kid_of(&self, component: &str, alg: &str) -> String {
        let keys = self.admin(reqwest::Method::GET, "/keys", None).await;
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["providerId"] == component && k["algorithm"] == alg)
            .and_then(|k| k["kid"].as_str())
            .unwrap_or_else(|| panic!("no {alg} key of component {component} in {keys}"))
            .to_owned()
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let admin = admin_token(&self.http).await.expect("an admin token");
        let mut request = self
            .http
            .request(
                method.clone(),
                format!("{}/admin/realms/{}{path}", keycloak_url(), self.name),
            )
            .bearer_auth(admin);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the admin API answers");
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }

    /// Deletes the realm.
    pub async fn delete(self) {
        if let Ok(admin) = admin_token(&self.http).await {
            let _ = self
                .http
                .delete(format!("{}/admin/realms/{}", keycloak_url(), self.name))
                .bearer_auth(admin)
                .send()
                .await;
        }
    }
}

/// The realm file with each `${NAME:default}` placeholder (which Keycloak
/// fills from its environment when it imports the file at start) replaced
/// by its default: the admin API takes the text as it is.
fn with_defaults(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            break;
        };
        let placeholder = &rest[start + 2..start + len];
        out.push_str(
            placeholder
                .split_once(':')
                .map_or("", |(_, default)| default),
        );
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// A token of the provider's bootstrap admin (`scripts/infra.sh` makes it,
/// on the loopback only).
async fn admin_token(http: &reqwest::Client) -> anyhow::Result<String> {
    let tokens: Value = http
        .post(format!(
            "{}/realms/master/protocol/openid-connect/token",
            keycloak_url()
        ))
        .form(&[
            ("grant_type", "password"),
            ("client_id", "admin-cli"),
            ("username", "admin"),
            ("password", "admin"),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    tokens["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("no admin token")
}

/// The `action` of the provider's login form, unescaped.
fn login_form_action(html: &str) -> Option<String> {
    let form = &html[html.find("kc-form-login")?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = start + form[start..].find('"')?;
    Some(form[start..end].replace("&amp;", "&"))
}

/// A token signed with the test-only key under `kid`: whatever claims the test needs.
pub fn signed_with_test_key(kid: &str, alg: jsonwebtoken::Algorithm, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.into());
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(TEST_RSA_PEM.as_bytes()).expect("the test key");
    jsonwebtoken::encode(&header, claims, &key).expect("signing")
}
