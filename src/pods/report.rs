//! `pullsecret-injector report`: list the Pods left without credentials, once, with the
//! credentials of the caller (kubeconfig or in-cluster), as a table or as JSON.
//!
//! It reads what the running injector watches: the namespaces matching the opt-in selector
//! (and, for a registry scoped by its own `namespaceSelector`, those matching that too)
//! and the Pending Pods (`fieldSelector=status.phase=Pending`, 500 per page), and examines
//! each with the webhook's own decision ([`super::examine`]). It needs `namespaces` list
//! and `pods` list at cluster scope.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

use super::{Finding, examine};
use crate::config::Settings;

/// Page size of the lists.
const PAGE: u32 = 500;

/// The Pods left without credentials in the namespaces `settings` opts in, sorted by
/// namespace and name.
pub async fn collect(client: &Client, settings: &Settings) -> Result<Vec<Finding>, kube::Error> {
    let selector = settings.namespace_selector.to_string();
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = list_all::<Namespace>(
        Api::all(client.clone()),
        ListParams::default().labels(&selector),
    )
    .await?
    .into_iter()
    .filter(|ns| ns.metadata.deletion_timestamp.is_none())
    .filter_map(|ns| Some((ns.metadata.name?, ns.metadata.labels.unwrap_or_default())))
    .collect();
    if namespaces.is_empty() {
        return Ok(Vec::new());
    }
    let registries = crate::registry::Registries::new(settings.entries());
    let pending = ListParams::default().fields("status.phase=Pending");
    let mut found: Vec<Finding> = list_all::<Pod>(Api::all(client.clone()), pending)
        .await?
        .iter()
        .filter_map(|p| {
            let labels = namespaces.get(p.metadata.namespace.as_ref()?)?;
            examine(p, &registries, &settings.pod_opt_out_annotation)?.within(|registry| {
                settings.registries.iter().any(|r| {
                    r.entry.name() == registry
                        && r.namespace_selector
                            .as_ref()
                            .is_none_or(|s| s.matches(labels))
                })
            })
        })
        .collect();
    found.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(found)
}

/// Every object of a list, page by page.
async fn list_all<K>(api: Api<K>, params: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

/// The findings as an aligned table with a header (`NAMESPACE POD OWNER REASON`).
pub fn table(found: &[Finding]) -> String {
    let rows: Vec<[String; 4]> = found
        .iter()
        .map(|f| {
            let owner = f
                .owner
                .as_ref()
                .map(|o| format!("{}/{}", o.kind, o.name))
                .unwrap_or_else(|| "<none>".into());
            [f.namespace.clone(), f.name.clone(), owner, f.reason.clone()]
        })
        .collect();
    let header = ["NAMESPACE", "POD", "OWNER", "REASON"].map(String::from);
    let widths: Vec<usize> = (0..3)
        .map(|i| {
            std::iter::once(&header)
                .chain(&rows)
                .map(|r| r[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(out, "{cell:<width$}   ");
        }
        let _ = writeln!(out, "{}", row[3]);
    }
    out
}

/// The findings as JSON: `{"pods": [...]}`.
pub fn json(found: &[Finding]) -> String {
    let value = serde_json::json!({ "pods": found });
    // Plain data of strings and numbers always serialises.
    serde_json::to_string_pretty(&value).expect("findings serialise to JSON")
}
