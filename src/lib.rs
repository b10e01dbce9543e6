//! pullsecret-injector: a mutating admission webhook that adds registry-aware
//! `imagePullSecrets` to Pods, and a sync task that keeps those Secrets fresh.
//!
//! Data flows one way. Webhook: bytes -> [`admission`] -> [`mutate::plan`] -> patch ->
//! response. Sync: [`config`] -> [`credentials`] -> [`sync`] -> Secrets in the opted-in
//! namespaces. The pure modules ([`image`], [`registry`], [`mutate`], [`dockerconfig`],
//! [`labels`]) do no I/O so that their tests are plain and exhaustive.

pub mod admission;
pub mod certs;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod dockerconfig;
pub mod health;
pub mod image;
pub mod labels;
pub mod metrics;
pub mod mutate;
pub mod pods;
pub mod registry;
pub mod run;
pub mod server;
pub mod sync;
pub mod tls;
