//! The decision for one namespace: which steps bring its managed Secrets to the desired
//! state. Pure: it takes what the watches and the refresh loops know and returns steps;
//! `apply` carries them out.
//!
//! Desired: for every registry whose credential is known, a `kubernetes.io/dockerconfigjson`
//! Secret named `secretName` in every namespace that matches the selector and is not being
//! deleted, holding exactly our data key; none of our Secrets anywhere else, and none under
//! a name that no registry claims any more (a retired name). A registry without a credential yet (or
//! whose refresh fails) keeps whatever Secret is there: the last good credential stays
//! valid until its own expiry, and after it there is nothing better to write.
//!
//! This is the one place that says whether a namespace gets a registry's Secret
//! ([`wanted`]) and what to do with each Secret we know of in it.

use std::collections::BTreeMap;

use crate::credentials::Credential;
use crate::labels::LabelSelector;

use super::secret::{Desired, Observed, desired};
use super::state::{NamespaceInfo, SecretState};

/// One registry as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub struct RegistryView<'a> {
    /// `registries[].name`.
    pub name: &'a str,
    /// `registries[].secretName`.
    pub secret_name: &'a str,
    /// The `auths` keys.
    pub hosts: &'a [String],
    /// `registries[].namespaceSelector`, if any.
    pub namespace_selector: Option<&'a LabelSelector>,
    /// The latest good credential, if any.
    pub credential: Option<&'a Credential>,
}

/// One namespace and everything known about it.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceView<'a> {
    /// `sync.instance`.
    pub instance: &'a str,
    /// The namespace's name.
    pub name: &'a str,
    /// `None` when it does not match the selector (or no longer exists).
    pub info: Option<&'a NamespaceInfo>,
    /// The configured registries, in config order.
    pub registries: &'a [RegistryView<'a>],
    /// What is known of the managed names in it, by name.
    pub secrets: &'a BTreeMap<String, SecretState>,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create the Secret (a plain POST: never merges into someone else's object).
    Create(Desired),
    /// Bring our Secret to `desired`, guarded by what we observed.
    Update {
        /// The object to apply.
        desired: Desired,
        /// What we last saw of it.
        observed: Observed,
    },
    /// Delete our Secret, if it is still the object we observed.
    Delete {
        /// Its name.
        name: String,
        /// What we last saw of it.
        observed: Observed,
        /// Why it goes.
        reason: DeleteReason,
    },
    /// Report a Secret with a managed name that is not ours (log line and Event).
    ReportForeign {
        /// Its name.
        secret_name: String,
        /// The registry that would manage it.
        registry: String,
    },
}

/// Why one of our Secrets is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteReason {
    /// Its namespace no longer opts in, is being deleted, or is not selected by the registry.
    NamespaceOptedOut,
    /// No configured registry uses its name any more (a retired `secretName`).
    NameRetired,
}

impl DeleteReason {
    /// In words, for log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NamespaceOptedOut => {
                "namespace no longer opted in (or not selected for this registry)"
            }
            Self::NameRetired => "no configured registry uses this Secret name any more",
        }
    }
}

/// Whether `namespace` should hold `registry`'s Secret: it matches the opt-in selector (it
/// is in the mirror at all), is not being deleted, and matches the registry's own selector,
/// if any. The webhook entry of a scoped registry is registered with the same two selectors,
/// so the API server sends it exactly the Pods of these namespaces.
pub fn wanted(namespace: Option<&NamespaceInfo>, registry: &RegistryView<'_>) -> bool {
    namespace.is_some_and(|ns| {
        !ns.terminating
            && registry
                .namespace_selector
                .is_none_or(|s| s.matches(&ns.labels))
    })
}

/// The steps for one namespace, in registry order.
pub fn plan(ns: &NamespaceView<'_>) -> Vec<Step> {
    let mut steps = Vec::new();
    for r in ns.registries {
        let known = ns.secrets.get(r.secret_name);
        let step = match (wanted(ns.info, r), known, r.credential) {
            (false, Some(SecretState::Ours(o)), _) => Some(Step::Delete {
                name: r.secret_name.to_string(),
                observed: o.clone(),
                reason: DeleteReason::NamespaceOptedOut,
            }),
            (false, _, _) => None,
            (true, Some(SecretState::Foreign { reported: false }), _) => {
                Some(Step::ReportForeign {
                    secret_name: r.secret_name.to_string(),
                    registry: r.name.to_string(),
                })
            }
            (true, _, None) => None,
            // An extra data key makes the digests differ; the update removes it.
            (true, Some(SecretState::Ours(o)), Some(c)) => {
                let d = desired(ns.instance, ns.name, r.secret_name, r.name, r.hosts, c);
                (d.digest != o.digest).then(|| Step::Update {
                    desired: d,
                    observed: o.clone(),
                })
            }
            // Absent, or someone else's that we reported: try to create (the other one
            // may be gone by now; the watch cannot tell us).
            (true, None | Some(SecretState::Foreign { reported: true }), Some(c)) => {
                Some(Step::Create(desired(
                    ns.instance,
                    ns.name,
                    r.secret_name,
                    r.name,
                    r.hosts,
                    c,
                )))
            }
        };
        steps.extend(step);
    }
    // Our Secrets under names no registry claims (the watches only see configured and
    // retired names, and only Secrets with our labels).
    for (name, known) in ns.secrets {
        if let SecretState::Ours(o) = known
            && !ns.registries.iter().any(|r| r.secret_name == name)
        {
            steps.push(Step::Delete {
                name: name.clone(),
                observed: o.clone(),
                reason: DeleteReason::NameRetired,
            });
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::secret::tests::{cred, hosts};
    use k8s_openapi::ByteString;

    const INSTANCE: &str = "psi";
    const NS: &str = "team-a";

    /// What the watch would report after we wrote the Secret for `c`.
    fn ours_with(c: &Credential) -> SecretState {
        let d = desired(INSTANCE, NS, "yc", "yandex", &hosts(), c);
        let mut s = d.secret;
        s.metadata.uid = Some("uid-1".into());
        s.metadata.resource_version = Some("7".into());
        SecretState::Ours(Observed::of(&s))
    }

    /// Our Secret, edited by hand: an extra data key.
    fn ours_edited(c: &Credential) -> SecretState {
        let mut s = desired(INSTANCE, NS, "yc", "yandex", &hosts(), c).secret;
        s.data
            .as_mut()
            .unwrap()
            .insert("extra".into(), ByteString(b"x".to_vec()));
        SecretState::Ours(Observed::of(&s))
    }

    /// Namespace presence in a case.
    #[derive(Clone, Copy)]
    enum Ns {
        Matching,
        NotMatching,
        Terminating,
    }

    /// Summaries of the steps: `create yc`, `update yc`, `delete yc`, `report yc`.
    fn summary(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Create(d) => format!("create {}", d.secret.metadata.name.as_deref().unwrap()),
                Step::Update { desired, .. } => {
                    format!(
                        "update {}",
                        desired.secret.metadata.name.as_deref().unwrap()
                    )
                }
                Step::Delete {
                    name,
                    reason: DeleteReason::NamespaceOptedOut,
                    ..
                } => format!("delete {name}"),
                Step::Delete {
                    name,
                    reason: DeleteReason::NameRetired,
                    ..
                } => format!("delete retired {name}"),
                Step::ReportForeign { secret_name, .. } => format!("report {secret_name}"),
            })
            .collect()
    }

    fn run(ns: Ns, known: Option<SecretState>, credential: Option<&Credential>) -> Vec<Step> {
        let info = match ns {
            Ns::Matching => Some(NamespaceInfo::default()),
            Ns::NotMatching => None,
            Ns::Terminating => Some(NamespaceInfo {
                terminating: true,
                ..NamespaceInfo::default()
            }),
        };
        let h = hosts();
        let registries = [RegistryView {
            name: "yandex",
            secret_name: "yc",
            hosts: &h,
            namespace_selector: None,
            credential,
        }];
        let secrets: BTreeMap<String, SecretState> =
            known.into_iter().map(|k| ("yc".to_string(), k)).collect();
        plan(&NamespaceView {
            instance: INSTANCE,
            name: NS,
            info: info.as_ref(),
            registries: &registries,
            secrets: &secrets,
        })
    }

    #[test]
    fn plan_table() {
        let t1 = cred("t1", Some("2026-11-29T20:00:00Z"));
        let t2 = cred("t2", Some("2026-11-30T08:00:00Z"));
        let expired = cred("t0", Some("2026-11-29T09:00:00Z"));
        let static_ = cred("robot-password", None);
        let foreign = |reported| Some(SecretState::Foreign { reported });
        // (name, namespace, known Secret, credential, expected steps)
        type Case<'a> = (
            &'a str,
            Ns,
            Option<SecretState>,
            Option<&'a Credential>,
            &'a [&'a str],
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "matching_absent_with_credential_creates",
                Ns::Matching,
                None,
                Some(&t1),
                &["create yc"],
            ),
            (
                "matching_absent_static_credential_creates",
                Ns::Matching,
                None,
                Some(&static_),
                &["create yc"],
            ),
            (
                "matching_absent_without_credential_waits",
                Ns::Matching,
                None,
                None,
                &[],
            ),
            (
                "matching_ours_up_to_date_does_nothing",
                Ns::Matching,
                Some(ours_with(&t1)),
                Some(&t1),
                &[],
            ),
            (
                "matching_ours_stale_token_updates",
                Ns::Matching,
                Some(ours_with(&t1)),
                Some(&t2),
                &["update yc"],
            ),
            (
                "matching_ours_static_to_token_updates",
                Ns::Matching,
                Some(ours_with(&static_)),
                Some(&t1),
                &["update yc"],
            ),
            (
                "matching_ours_edited_by_hand_is_repaired",
                Ns::Matching,
                Some(ours_edited(&t1)),
                Some(&t1),
                &["update yc"],
            ),
            (
                "matching_ours_expired_and_refresh_failing_keeps_it",
                Ns::Matching,
                Some(ours_with(&expired)),
                None,
                &[],
            ),
            (
                "matching_ours_expired_same_last_good_credential_keeps_it",
                Ns::Matching,
                Some(ours_with(&expired)),
                Some(&expired),
                &[],
            ),
            (
                "matching_ours_expired_new_credential_updates",
                Ns::Matching,
                Some(ours_with(&expired)),
                Some(&t1),
                &["update yc"],
            ),
            (
                "matching_ours_without_credential_is_kept",
                Ns::Matching,
                Some(ours_with(&t1)),
                None,
                &[],
            ),
            (
                "matching_foreign_new_is_reported_not_written",
                Ns::Matching,
                foreign(false),
                Some(&t1),
                &["report yc"],
            ),
            (
                "matching_foreign_new_without_credential_is_reported",
                Ns::Matching,
                foreign(false),
                None,
                &["report yc"],
            ),
            (
                "matching_foreign_reported_is_tried_again_by_create_only",
                Ns::Matching,
                foreign(true),
                Some(&t1),
                &["create yc"],
            ),
            (
                "matching_foreign_reported_without_credential_does_nothing",
                Ns::Matching,
                foreign(true),
                None,
                &[],
            ),
            (
                "not_matching_ours_is_deleted",
                Ns::NotMatching,
                Some(ours_with(&t1)),
                Some(&t1),
                &["delete yc"],
            ),
            (
                "not_matching_ours_is_deleted_without_credential_too",
                Ns::NotMatching,
                Some(ours_with(&t1)),
                None,
                &["delete yc"],
            ),
            (
                "not_matching_absent_does_nothing",
                Ns::NotMatching,
                None,
                Some(&t1),
                &[],
            ),
            (
                "not_matching_foreign_is_never_touched",
                Ns::NotMatching,
                foreign(false),
                Some(&t1),
                &[],
            ),
            (
                "terminating_ours_is_deleted",
                Ns::Terminating,
                Some(ours_with(&t1)),
                Some(&t1),
                &["delete yc"],
            ),
            (
                "terminating_absent_is_not_created",
                Ns::Terminating,
                None,
                Some(&t1),
                &[],
            ),
            (
                "terminating_foreign_is_not_reported",
                Ns::Terminating,
                foreign(false),
                Some(&t1),
                &[],
            ),
        ];
        for (name, ns, known, credential, want) in cases {
            assert_eq!(summary(&run(ns, known, credential)), want, "{name}");
        }
    }

    #[test]
    fn created_secret_is_the_contract_object_for_this_namespace() {
        let t1 = cred("t1", Some("2026-11-29T20:00:00Z"));
        let steps = run(Ns::Matching, None, Some(&t1));
        let [Step::Create(d)] = steps.as_slice() else {
            panic!("{steps:?}")
        };
        assert_eq!(d, &desired(INSTANCE, NS, "yc", "yandex", &hosts(), &t1));
        assert_eq!(d.secret.metadata.namespace.as_deref(), Some(NS));
    }

    #[test]
    fn update_and_delete_carry_what_was_observed() {
        let t1 = cred("t1", Some("2026-11-29T20:00:00Z"));
        let t2 = cred("t2", Some("2026-11-30T08:00:00Z"));
        let SecretState::Ours(seen) = ours_with(&t1) else {
            unreachable!()
        };
        match run(Ns::Matching, Some(ours_with(&t1)), Some(&t2)).as_slice() {
            [Step::Update { observed, desired }] => {
                assert_eq!(observed, &seen);
                assert_ne!(desired.digest, seen.digest);
            }
            other => panic!("{other:?}"),
        }
        match run(Ns::NotMatching, Some(ours_with(&t1)), None).as_slice() {
            [
                Step::Delete {
                    name,
                    observed,
                    reason,
                },
            ] => {
                assert_eq!(
                    (name.as_str(), observed, *reason),
                    ("yc", &seen, DeleteReason::NamespaceOptedOut)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> NamespaceInfo {
        NamespaceInfo {
            labels: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            terminating: false,
        }
    }

    #[test]
    fn wanted_needs_the_opt_in_and_the_registrys_own_selector() {
        let team_a = LabelSelector::parse("team=a").unwrap();
        let not_legacy = LabelSelector::parse("team,!legacy").unwrap();
        let terminating_a = NamespaceInfo {
            terminating: true,
            ..labels(&[("team", "a")])
        };
        let a = labels(&[("team", "a")]);
        let b = labels(&[("team", "b")]);
        let a_legacy = labels(&[("team", "a"), ("legacy", "")]);
        let none = labels(&[]);
        // (case, namespace (None: not opted in), registry selector, wanted)
        type Case<'a> = (
            &'a str,
            Option<&'a NamespaceInfo>,
            Option<&'a LabelSelector>,
            bool,
        );
        let cases: Vec<Case<'_>> = vec![
            ("unscoped_opted_in", Some(&none), None, true),
            ("unscoped_not_opted_in", None, None, false),
            ("unscoped_terminating", Some(&terminating_a), None, false),
            ("scoped_matching", Some(&a), Some(&team_a), true),
            ("scoped_other_team", Some(&b), Some(&team_a), false),
            ("scoped_no_labels", Some(&none), Some(&team_a), false),
            (
                "scoped_not_opted_in_even_if_matching",
                None,
                Some(&team_a),
                false,
            ),
            (
                "scoped_matching_but_terminating",
                Some(&terminating_a),
                Some(&team_a),
                false,
            ),
            (
                "scoped_exists_and_not_exists_match",
                Some(&b),
                Some(&not_legacy),
                true,
            ),
            (
                "scoped_does_not_exist_refuses",
                Some(&a_legacy),
                Some(&not_legacy),
                false,
            ),
        ];
        for (case, ns, namespace_selector, want) in cases {
            let registry = RegistryView {
                name: "r",
                secret_name: "s",
                hosts: &[],
                namespace_selector,
                credential: None,
            };
            assert_eq!(wanted(ns, &registry), want, "{case}");
        }
    }

    #[test]
    fn relabelling_moves_the_secrets_from_one_teams_registry_to_the_others() {
        let t1 = cred("t1", Some("2026-11-29T20:00:00Z"));
        let h = hosts();
        let team_a = LabelSelector::parse("team=a").unwrap();
        let team_b = LabelSelector::parse("team=b").unwrap();
        let registries = [
            RegistryView {
                name: "ra",
                secret_name: "sa",
                hosts: &h,
                namespace_selector: Some(&team_a),
                credential: Some(&t1),
            },
            RegistryView {
                name: "rb",
                secret_name: "sb",
                hosts: &h,
                namespace_selector: Some(&team_b),
                credential: Some(&t1),
            },
            RegistryView {
                name: "shared",
                secret_name: "ss",
                hosts: &h,
                namespace_selector: None,
                credential: Some(&t1),
            },
        ];
        let ours = |secret: &str, registry: &str| {
            let mut s = desired(INSTANCE, NS, secret, registry, &h, &t1).secret;
            s.metadata.uid = Some(format!("uid-{secret}"));
            s.metadata.resource_version = Some("3".into());
            SecretState::Ours(Observed::of(&s))
        };
        let run = |info: &NamespaceInfo, secrets: &BTreeMap<String, SecretState>| {
            summary(&plan(&NamespaceView {
                instance: INSTANCE,
                name: NS,
                info: Some(info),
                registries: &registries,
                secrets,
            }))
        };
        let nothing = BTreeMap::new();
        assert_eq!(
            run(&labels(&[("team", "a")]), &nothing),
            ["create sa", "create ss"]
        );
        let as_team_a = BTreeMap::from([
            ("sa".to_string(), ours("sa", "ra")),
            ("ss".to_string(), ours("ss", "shared")),
        ]);
        assert_eq!(
            run(&labels(&[("team", "a")]), &as_team_a),
            Vec::<String>::new()
        );
        assert_eq!(
            run(&labels(&[("team", "b")]), &as_team_a),
            ["delete sa", "create sb"],
            "team a's Secret goes, team b's comes, the shared one stays"
        );
        assert_eq!(run(&labels(&[]), &as_team_a), ["delete sa"]);
    }

    #[test]
    fn registries_are_planned_independently_in_config_order() {
        let t1 = cred("t1", None);
        let h = hosts();
        let registries = [
            RegistryView {
                name: "a",
                secret_name: "sa",
                hosts: &h,
                namespace_selector: None,
                credential: None,
            },
            RegistryView {
                name: "b",
                secret_name: "sb",
                hosts: &h,
                namespace_selector: None,
                credential: Some(&t1),
            },
            RegistryView {
                name: "c",
                secret_name: "sc",
                hosts: &h,
                namespace_selector: None,
                credential: Some(&t1),
            },
        ];
        let secrets =
            BTreeMap::from([("sc".to_string(), SecretState::Foreign { reported: false })]);
        let info = NamespaceInfo::default();
        let steps = plan(&NamespaceView {
            instance: INSTANCE,
            name: NS,
            info: Some(&info),
            registries: &registries,
            secrets: &secrets,
        });
        assert_eq!(summary(&steps), ["create sb", "report sc"]);
        assert_eq!(
            steps[1],
            Step::ReportForeign {
                secret_name: "sc".into(),
                registry: "c".into()
            }
        );
    }

    /// Our Secret under a name no registry claims (what a retired name's watch reports).
    fn ours_named(name: &str) -> SecretState {
        let c = cred("t1", None);
        let mut s = desired(INSTANCE, NS, name, "gone", &hosts(), &c).secret;
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.resource_version = Some("3".into());
        SecretState::Ours(Observed::of(&s))
    }

    #[test]
    fn secrets_under_names_no_registry_claims_are_deleted_wherever_they_are() {
        let t1 = cred("t1", None);
        let h = hosts();
        let registries = [RegistryView {
            name: "yandex",
            secret_name: "yc",
            hosts: &h,
            credential: Some(&t1),
            namespace_selector: None,
        }];
        let secrets = BTreeMap::from([
            ("old-a".to_string(), ours_named("old-a")),
            ("old-b".to_string(), ours_named("old-b")),
            // Foreign entries only ever come from refused creates of configured names;
            // one under an unclaimed name is never touched either.
            (
                "old-c".to_string(),
                SecretState::Foreign { reported: false },
            ),
        ]);
        let info = NamespaceInfo::default();
        let terminating = NamespaceInfo {
            terminating: true,
            ..NamespaceInfo::default()
        };
        for (what, info) in [
            ("matching", Some(&info)),
            ("not matching", None),
            ("terminating", Some(&terminating)),
        ] {
            let steps = plan(&NamespaceView {
                instance: INSTANCE,
                name: NS,
                info,
                registries: &registries,
                secrets: &secrets,
            });
            let mut want = if info.is_some_and(|i| !i.terminating) {
                vec!["create yc"]
            } else {
                vec![]
            };
            want.extend(["delete retired old-a", "delete retired old-b"]);
            assert_eq!(summary(&steps), want, "{what}");
        }
    }

    #[test]
    fn a_foreign_data_key_is_an_update_that_carries_the_key_names() {
        let t1 = cred("t1", Some("2026-11-29T20:00:00Z"));
        match run(Ns::Matching, Some(ours_edited(&t1)), Some(&t1)).as_slice() {
            [Step::Update { observed, desired }] => {
                assert_eq!(observed.foreign_keys, ["extra"]);
                assert_eq!(desired, &desired_for_plan(&t1));
            }
            other => panic!("{other:?}"),
        }
        // Without a credential nothing is written, foreign key or not.
        assert_eq!(run(Ns::Matching, Some(ours_edited(&t1)), None), []);
    }

    fn desired_for_plan(c: &Credential) -> Desired {
        desired(INSTANCE, NS, "yc", "yandex", &hosts(), c)
    }
}
