//! A VM metadata service stand-in (GCE-compatible token endpoint, as on Yandex Cloud VMs).
//!
//! `GET /computeMetadata/v1/instance/service-accounts/default/token` with
//! `Metadata-Flavor: Google` answers `{"access_token","expires_in","token_type":"Bearer"}`;
//! without the header it answers 403 in plain text like the real one. Token and lifetime
//! can be changed at runtime, calls are counted, and it can be switched to other answers
//! or to hanging.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// The token path of the real service.
pub const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

/// What the stand-in answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A token (403 without `Metadata-Flavor: Google`).
    Token,
    /// This status and body whatever the request.
    Respond {
        /// HTTP status.
        status: u16,
        /// Content type.
        content_type: &'static str,
        /// Body.
        body: String,
    },
    /// Never answer.
    Hang,
}

struct MetadataState {
    token: String,
    expires_in: u64,
    mode: Mode,
    calls: usize,
    missing_header: usize,
}

/// The metadata stand-in on `127.0.0.1:<random port>`; stops when dropped.
pub struct MetadataStandIn {
    server: super::LoopbackServer<MetadataState>,
}

impl MetadataStandIn {
    /// Start in [`Mode::Token`] with token `t1.metadata-token-1` and `expires_in` 42 000 s.
    pub async fn start() -> Self {
        let state = MetadataState {
            token: "t1.metadata-token-1".into(),
            expires_in: 42_000,
            mode: Mode::Token,
            calls: 0,
            missing_header: 0,
        };
        let server = super::LoopbackServer::start(state, |state| {
            Router::new()
                .route(TOKEN_PATH, get(handle))
                .with_state(state)
        })
        .await;
        Self { server }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MetadataState> {
        self.server.lock()
    }

    /// `http://127.0.0.1:<port>/computeMetadata/v1/instance/service-accounts/default/token`.
    pub fn endpoint(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.server.addr)
    }

    /// The token answered from now on.
    pub fn set_token(&self, token: &str) {
        self.lock().token = token.to_string();
    }

    /// The `expires_in` answered from now on.
    pub fn set_expires_in(&self, seconds: u64) {
        self.lock().expires_in = seconds;
    }

    /// Switch what the stand-in answers.
    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Requests received.
    pub fn calls(&self) -> usize {
        self.lock().calls
    }

    /// Requests refused for want of `Metadata-Flavor: Google`.
    pub fn missing_header(&self) -> usize {
        self.lock().missing_header
    }
}

async fn handle(State(state): State<Arc<Mutex<MetadataState>>>, headers: HeaderMap) -> Response {
    let mode = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.calls += 1;
        st.mode.clone()
    };
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response()
    };
    match mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            text(StatusCode::GATEWAY_TIMEOUT, "text/plain", String::new())
        }
        Mode::Respond {
            status,
            content_type,
            body,
        } => text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            content_type,
            body,
        ),
        Mode::Token => {
            let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
            let flavor_ok = headers
                .get("metadata-flavor")
                .is_some_and(|v| v.as_bytes() == b"Google");
            if !flavor_ok {
                st.missing_header += 1;
                return text(
                    StatusCode::FORBIDDEN,
                    "text/plain",
                    "Missing required header \"Metadata-Flavor\": \"Google\"\n".into(),
                );
            }
            text(
                StatusCode::OK,
                "application/json",
                json!({
                    "access_token": st.token,
                    "expires_in": st.expires_in,
                    "token_type": "Bearer",
                })
                .to_string(),
            )
        }
    }
}
