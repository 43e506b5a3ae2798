//! What a verified token says: who (`sub`) and with which role.

use serde::{Deserialize, Serialize};

/// The roles of the contract, lowest first: where a token names several, the
/// highest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Student,
    Instructor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Instructor => "instructor",
            Role::Admin => "admin",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "student" => Some(Role::Student),
            "instructor" => Some(Role::Instructor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The claims `mint-token` and the tests sign in shared-secret mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
}

/// The caller a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user at the identity provider. For students it becomes a
    /// `student_key` in ingest and goes no further.
    pub sub: String,
    /// The highest role of the contract's the token names; `None` for an
    /// authentic token that names none of them (a member of staff the
    /// provider knows but this product does not): 403, not 401.
    pub role: Option<Role>,
}

/// The claims read from any token, in either mode. The signature, `exp`,
/// `nbf`, `iss` and `aud` are checked by `jsonwebtoken` before this is read.
#[derive(Debug, Deserialize)]
pub(super) struct TokenClaims {
    pub sub: String,
    pub exp: u64,
    #[serde(default)]
    pub role: Option<String>,
    /// Identity providers put several roles here (Keycloak's realm-role
    /// mapper, Entra ID's app roles).
    #[serde(default)]
    pub roles: Option<Vec<String>>,
}

impl TokenClaims {
    /// The highest known role among `role` and `roles`; unknown names (an
    /// identity provider's own `offline_access`, say) are ignored.
    pub fn principal(self) -> Principal {
        let role = self
            .role
            .iter()
            .chain(self.roles.iter().flatten())
            .filter_map(|name| Role::parse(name))
            .max();
        Principal {
            sub: self.sub,
            role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(json: serde_json::Value) -> Option<Role> {
        serde_json::from_value::<TokenClaims>(json)
            .unwrap()
            .principal()
            .role
    }

    #[test]
    fn the_highest_known_role_wins() {
        let base = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({"sub": "a", "exp": 1});
            claims
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            principal(claims)
        };
        assert_eq!(
            base(serde_json::json!({"role": "student"})),
            Some(Role::Student)
        );
        assert_eq!(
            base(serde_json::json!({"roles": ["offline_access", "student", "instructor"]})),
            Some(Role::Instructor)
        );
        assert_eq!(
            base(serde_json::json!({"role": "instructor", "roles": ["admin"]})),
            Some(Role::Admin)
        );
        assert_eq!(
            base(serde_json::json!({"roles": ["uma_authorization"]})),
            None
        );
        assert_eq!(base(serde_json::json!({"role": "Student"})), None);
        assert_eq!(base(serde_json::json!({})), None);
    }

    #[test]
    fn a_role_of_the_wrong_type_does_not_parse() {
        for claims in [
            serde_json::json!({"sub": "a", "exp": 1, "role": 7}),
            serde_json::json!({"sub": "a", "exp": 1, "roles": "admin"}),
            serde_json::json!({"sub": "a", "exp": 1, "roles": [1]}),
        ] {
            assert!(serde_json::from_value::<TokenClaims>(claims).is_err());
        }
    }
}
