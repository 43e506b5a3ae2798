//! Ingest's settings, from the environment (the contract's table, plus a few
//! of ingest's own with sensible defaults).

use std::path::PathBuf;
use std::time::Duration;

use shared::env::{parse_or, var, var_or};

use crate::client_addr::TrustedProxies;
use crate::filter::Policy;

/// The list shipped in the repo, built in, used when no file is configured.
pub const DEFAULT_WORDS: &str = include_str!("../../config/sensitive-words.txt");

#[derive(Debug, Clone)]
pub struct Config {
    /// `FEEDBACK_INGEST_ADDR`
    pub addr: String,
    /// `FEEDBACK_KAFKA_BROKERS`
    pub brokers: String,
    /// `FEEDBACK_KAFKA_TOPIC`
    pub topic: String,
    /// `FEEDBACK_SPOOL_DIR`
    pub spool_dir: PathBuf,
    /// `FEEDBACK_SPOOL_MAX_BYTES` (default 256 MiB): a full spool answers 503.
    pub spool_max_bytes: u64,
    /// How tokens are checked: `FEEDBACK_OIDC_*` or `FEEDBACK_JWT_SECRET`,
    /// and `FEEDBACK_JWT_MAX_TTL_SECS`.
    pub auth: shared::auth::Settings,
    /// `FEEDBACK_STUDENT_KEY_SECRET`, the HMAC key of `student_key`: required
    /// in identity-provider mode; in shared-secret mode it may be left out,
    /// and is then derived from the JWT secret.
    pub student_key_secret: Vec<u8>,
    /// `FEEDBACK_RATE_LIMIT_STUDENT_PER_MIN`
    pub rate_limit_student_per_min: u32,
    /// `FEEDBACK_RATE_LIMIT_IP_PER_MIN`
    pub rate_limit_ip_per_min: u32,
    /// `FEEDBACK_TRUSTED_PROXIES`: whose `X-Forwarded-For` the per-IP limit believes.
    pub trusted_proxies: TrustedProxies,
    /// `FEEDBACK_SENSITIVE_WORDS_FILE`; `None` uses the built-in list.
    pub sensitive_words_file: Option<PathBuf>,
    /// `FEEDBACK_SENSITIVE_POLICY`
    pub sensitive_policy: Policy,
    /// `FEEDBACK_KAFKA_DELIVERY_TIMEOUT_MS` (default 5000): how long one delivery may take.
    pub delivery_timeout: Duration,
    /// `FEEDBACK_IDEMPOTENCY_TTL_SECS` (default 86400).
    pub idempotency_ttl: Duration,
    /// `FEEDBACK_CATALOG`, and in closed mode `FEEDBACK_MYSQL_URL` to read it from.
    pub catalog: crate::catalog::Settings,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let auth = shared::auth::Settings::from_env()?;
        let student_key_secret = student_key_secret(&auth)?;
        Ok(Self {
            addr: var_or("FEEDBACK_INGEST_ADDR", "127.0.0.1:8080"),
            brokers: shared::env::kafka_brokers(),
            topic: shared::env::kafka_topic(),
            spool_dir: PathBuf::from(var_or("FEEDBACK_SPOOL_DIR", "var/spool")),
            spool_max_bytes: parse_or("FEEDBACK_SPOOL_MAX_BYTES", 256 * 1024 * 1024)?,
            auth,
            student_key_secret,
            rate_limit_student_per_min: parse_or("FEEDBACK_RATE_LIMIT_STUDENT_PER_MIN", 30)?,
            rate_limit_ip_per_min: parse_or("FEEDBACK_RATE_LIMIT_IP_PER_MIN", 600)?,
            trusted_proxies: parse_or("FEEDBACK_TRUSTED_PROXIES", TrustedProxies::default())?,
            sensitive_words_file: var("FEEDBACK_SENSITIVE_WORDS_FILE").map(PathBuf::from),
            sensitive_policy: parse_or("FEEDBACK_SENSITIVE_POLICY", Policy::Mask)?,
            delivery_timeout: Duration::from_millis(parse_or(
                "FEEDBACK_KAFKA_DELIVERY_TIMEOUT_MS",
                5000,
            )?),
            idempotency_ttl: Duration::from_secs(parse_or(
                "FEEDBACK_IDEMPOTENCY_TTL_SECS",
                86_400,
            )?),
            catalog: crate::catalog::Settings::from_env()?,
        })
    }
}

/// `FEEDBACK_STUDENT_KEY_SECRET`, or in shared-secret mode the key derived
/// from the JWT secret. Never derived from a token key in identity-provider
/// mode: the provider's keys are public, and whoever held such a key could
/// tell who wrote what.
fn student_key_secret(auth: &shared::auth::Settings) -> anyhow::Result<Vec<u8>> {
    use shared::auth::{Mode, MIN_SECRET_LEN};
    match (var("FEEDBACK_STUDENT_KEY_SECRET"), &auth.mode) {
        (Some(secret), _) => {
            anyhow::ensure!(
                secret.len() >= MIN_SECRET_LEN,
                "FEEDBACK_STUDENT_KEY_SECRET must be at least {MIN_SECRET_LEN} bytes"
            );
            Ok(secret.into_bytes())
        }
        (None, Mode::IdentityProvider { .. }) => anyhow::bail!(
            "FEEDBACK_STUDENT_KEY_SECRET is not set: identity-provider mode requires it \
             (at least {MIN_SECRET_LEN} bytes; the key of the students' pseudonyms, kept by ingest alone)"
        ),
        (None, Mode::SharedSecret { secret }) => {
            tracing::warn!(
                "FEEDBACK_STUDENT_KEY_SECRET is not set: students' pseudonyms derive from \
                 FEEDBACK_JWT_SECRET, and change if it does"
            );
            Ok(derive_student_key_secret(secret))
        }
    }
}

/// The default `student_key` HMAC key: HMAC-SHA256(JWT secret, a fixed label),
/// so it is stable across restarts without a second secret to manage.
pub fn derive_student_key_secret(jwt_secret: &str) -> Vec<u8> {
    shared::domain::StudentKey::derive(jwt_secret.as_bytes(), "feedback student_key v1")
        .as_str()
        .as_bytes()
        .to_vec()
}
