//! Requests straight to a service's router with `tower::ServiceExt::oneshot`:
//! no port, no server, no connection. For contract answers the router gives
//! on its own (refusals of tokens, parameters, paths and methods, static
//! pages), so their tests need neither a running service nor what stands
//! behind it.
//!
//! Requests are built with reqwest, as for a service on TCP, and answers are
//! `reqwest::Response`s, so the same assertions ([`crate::error_of`]) read
//! both. What a server adds is absent here: no `Content-Length` unless the
//! test sets one, no `Connection` handling; tests about those stay on TCP.

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A service's router, answering requests without a server.
pub struct Oneshot {
    /// What the requests' URLs start with; only their path and query reach the router.
    pub url: String,
    /// Builds the requests (it never sends one).
    pub client: reqwest::Client,
    /// The service's router with its state.
    router: axum::Router,
}

impl Oneshot {
    pub fn new(router: axum::Router) -> Self {
        Self {
            url: "http://router.invalid".into(),
            client: reqwest::Client::new(),
            router,
        }
    }

    /// Hands `request` to the router and returns its whole answer.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        let request = request.build().expect("a well-formed request");
        let mut request: axum::http::Request<reqwest::Body> =
            request.try_into().expect("an HTTP request");
        // What the server gives every request: the peer's address (ingest's
        // per-address limit reads it).
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40_000))));
        let response = self
            .router
            .clone()
            .oneshot(request.map(axum::body::Body::new))
            .await
            .expect("a router's errors are answers");
        let (head, body) = response.into_parts();
        let body = body.collect().await.expect("the whole body").to_bytes();
        reqwest::Response::from(axum::http::Response::from_parts(head, body))
    }

    /// GET `path` with `token` (none when `None`).
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        self.send(request).await
    }
}
