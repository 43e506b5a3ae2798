//! The JWT secret every test service uses, and tokens signed with it.

/// The JWT secret every test service uses.
pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A signed token for `sub` with `role`, valid for an hour.
pub fn token(sub: &str, role: shared::auth::Role) -> String {
    shared::auth::JwtKeys::new(JWT_SECRET.as_bytes())
        .expect("the test secret is long enough")
        .mint(sub, role, 3600)
}

/// A student token for `sub`.
pub fn student(sub: &str) -> String {
    token(sub, shared::auth::Role::Student)
}
