//! Stand-ins and helpers shared by the integration tests. Each test file that needs them
//! says `mod common;`; a file using only some of them must not warn about the rest.
#![allow(dead_code)]

pub mod admission;
pub mod iam;
pub mod metadata;
pub mod proxy;
pub mod registry;
pub mod wif;

/// A stand-in HTTP server on `127.0.0.1:<random port>` (plain HTTP) whose handlers share
/// state `S` with the test; stops when dropped.
pub struct LoopbackServer<S> {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    state: std::sync::Arc<std::sync::Mutex<S>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S: Send + 'static> LoopbackServer<S> {
    /// Serve the router `app` builds around the shared `state`.
    pub async fn start(
        state: S,
        app: impl FnOnce(std::sync::Arc<std::sync::Mutex<S>>) -> axum::Router,
    ) -> Self {
        let state = std::sync::Arc::new(std::sync::Mutex::new(state));
        let app = app(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a loopback port");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    /// The shared state (a handler that panicked leaves it usable).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S> Drop for LoopbackServer<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
