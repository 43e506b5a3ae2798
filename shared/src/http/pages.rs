//! The HTML pages (ingest's form, query's dashboard) and their scripts and
//! styles. Each page is a template with one placeholder, filled at start
//! with how to sign in (the `feedback-auth` meta tag the scripts read), and
//! goes out with a Content-Security-Policy that runs the service's own files
//! only: no inline script or style, no outside resource, no framing. A
//! comment that smuggled markup into the page could do nothing.

use axum::body::Bytes;
use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

use crate::auth::Authenticator;

/// The sign-in module both pages load from `/oidc.js`.
pub const OIDC_JS: &str = include_str!("../../assets/oidc.js");

const PLACEHOLDER: &str = "{{FEEDBACK_AUTH}}";

/// A page ready to serve: its HTML with the auth settings in, and its policy.
#[derive(Clone)]
pub struct Page {
    /// Filled once; each answer shares it rather than copying it.
    html: Bytes,
    csp: HeaderValue,
}

impl Page {
    pub fn new(template: &str, auth: &Authenticator) -> Self {
        let config = auth.page_config().to_string();
        let html = template.replace(PLACEHOLDER, &escape_attribute(&config));
        // The pages call their own service and, in identity-provider mode,
        // the provider's discovery document and token endpoint.
        let connect = match auth.provider_origin() {
            Some(origin) => format!("'self' {origin}"),
            None => "'self'".to_owned(),
        };
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src {connect}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        );
        Self {
            html: Bytes::from(html),
            csp: HeaderValue::from_str(&csp).expect("an origin is visible ASCII"),
        }
    }

    pub fn response(&self) -> Response {
        (
            [
                (header::CONTENT_SECURITY_POLICY, self.csp.clone()),
                (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            Html(self.html.clone()),
        )
            .into_response()
    }
}

/// A script served from the service's own origin.
pub fn script(source: &'static str) -> Response {
    asset("text/javascript; charset=utf-8", source)
}

/// A style sheet served from the service's own origin.
pub fn style(source: &'static str) -> Response {
    asset("text/css; charset=utf-8", source)
}

fn asset(content_type: &'static str, source: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidated on every load: a new release's page never runs last release's script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        source,
    )
        .into_response()
}

/// `text` safe inside a double-quoted HTML attribute.
fn escape_attribute(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auth_settings_go_into_the_meta_tag_escaped() {
        let auth = Authenticator::new(&crate::auth::Settings::shared_secret(
            "0123456789abcdef0123456789abcdef",
        ))
        .unwrap();
        let page = Page::new(
            r#"<meta name="feedback-auth" content="{{FEEDBACK_AUTH}}">"#,
            &auth,
        );
        assert_eq!(
            std::str::from_utf8(&page.html).unwrap(),
            r#"<meta name="feedback-auth" content="{&quot;mode&quot;:&quot;secret&quot;}">"#
        );
        let csp = page.csp.to_str().unwrap();
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(
            escape_attribute(r#"<a href="x">'&"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }
}
