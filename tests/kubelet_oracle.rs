//! Differential test of the matching against kubelet's own code.
//!
//! The oracle is `tests/kubelet-oracle/main.go` built against k8s.io/kubernetes at the test
//! cluster's version (`scripts/kubelet-oracle.sh install`): kubelet's image-name
//! normalisation and its credentialprovider keyring, fed the Pod's pull Secrets. Each run
//! generates at least 100,000 cases from a fresh seed (printed; `PSI_ORACLE_SEED=<seed>`
//! replays a run, `PSI_ORACLE_CASES=<n>` changes how many), and adds the string literals of
//! the upstream tests (`keyring_test.go` and distribution/reference's tests, which the oracle
//! reads from the Go module cache it was built from) as auths keys and as images. For every
//! case (pull Secrets, each a list of auths keys, and an image):
//!
//! * kubelet refuses the image exactly when `ImageRef::parse` does, and otherwise looks up
//!   the name `registry/repository` the project computes;
//! * kubelet uses exactly the Secrets the project says it uses, taking each auths key as the
//!   config takes it: an accepted host pattern through the webhook's matching, a refused one
//!   as its error claims (never, only for one-character hosts, or as the key it names);
//! * the config of those registries is accepted exactly when every host pattern is (and a
//!   `dockerConfig` file's keys pass `check_auths_keys`), and then the webhook injects
//!   exactly the Secrets kubelet uses.
//!
//! A sample of the accepted cases also runs through the real binary (`explain`).
//!
//! `#[ignore]`d for a plain `cargo test`; scripts/test.sh builds the oracle and runs it, and
//! it fails (never skips) when the oracle cannot be built.

use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pullsecret_injector::config::Settings;
use pullsecret_injector::dockerconfig;
use pullsecret_injector::image::ImageRef;
use pullsecret_injector::registry::{
    HostPattern, KubeletUse, PatternError, Registries, RegistryEntry, check_auths_keys,
};
use serde::Deserialize;

/// Generated cases per run, at least.
const MIN_CASES: usize = 100_000;
/// Cases that also run through `pullsecret-injector explain`.
const EXPLAIN_SAMPLE: usize = 120;
/// Disagreements printed in full when the test fails.
const SHOWN: usize = 25;

#[test]
#[ignore = "needs the kubelet oracle (scripts/kubelet-oracle.sh install); scripts/test.sh runs it"]
fn differential_matching_against_kubelet() {
    let seed = match std::env::var("PSI_ORACLE_SEED") {
        Ok(s) => s
            .parse::<u64>()
            .unwrap_or_else(|e| panic!("PSI_ORACLE_SEED={s:?} is not a u64: {e}")),
        Err(_) => fastrand::u64(..),
    };
    let count = match std::env::var("PSI_ORACLE_CASES") {
        Ok(s) => s
            .parse::<usize>()
            .unwrap_or_else(|e| panic!("PSI_ORACLE_CASES={s:?} is not a number: {e}")),
        Err(_) => MIN_CASES + MIN_CASES / 5,
    };
    eprintln!("kubelet oracle: seed {seed} (replay with PSI_ORACLE_SEED={seed})");
    let oracle = oracle_binary();
    eprintln!(
        "kubelet oracle: {} ({})",
        oracle.display(),
        oracle_output(&oracle, "version").trim()
    );

    let mut cases = Vec::new();
    let mut generator = Generator::new(seed);
    for _ in 0..count {
        cases.push(generator.case());
    }
    let generated = cases.len();
    assert!(
        generated >= MIN_CASES || std::env::var("PSI_ORACLE_CASES").is_ok(),
        "only {generated} cases generated"
    );
    let upstream = upstream_cases(&oracle);
    let upstream_count = upstream.len();
    cases.extend(upstream);

    let started = std::time::Instant::now();
    let answers = ask_oracle(&oracle, &cases);
    let oracle_time = started.elapsed();
    let mut report = Report::new(seed);
    let mut configs_checked = HashSet::new();
    let mut explain = Vec::new();
    let mut explain_rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    for (case, answer) in cases.iter().zip(&answers) {
        let verdict = check_case(case, answer, &mut report);
        let hosts: Vec<Vec<String>> = case.secrets.iter().map(|s| s.hosts().to_vec()).collect();
        if configs_checked.insert(hosts.clone()) {
            check_config(&hosts, &mut report, case);
        }
        if let Some(used) = verdict
            && explain.len() < EXPLAIN_SAMPLE
            && (!used.is_empty() || explain_rng.usize(..8) == 0)
            && explain_rng.usize(..20) == 0
        {
            explain.push((case.clone(), used));
        }
    }
    check_explain(&explain, &mut report);
    eprintln!(
        "kubelet oracle: {} cases ({generated} generated, {upstream_count} from upstream tests; \
         the oracle answered in {:.1} s), \
         {} configs validated, {} through explain; kubelet used a Secret in {:?} (generated, upstream), \
         refused the image in {:?}; {} refused patterns checked against their claims \
         ({} one-character-host cases not compared)",
        cases.len(),
        oracle_time.as_secs_f64(),
        configs_checked.len(),
        explain.len(),
        report.used,
        report.invalid_images,
        report.refused_patterns,
        report.one_char_skipped,
    );
    report.finish();
}

// ------------------------------------------------------------------------------------------
// The oracle

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    error: Option<String>,
    used: Vec<usize>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `PSI_KUBELET_ORACLE`, or the binary scripts/kubelet-oracle.sh builds (cached).
fn oracle_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PSI_KUBELET_ORACLE")
        && !p.is_empty()
    {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "PSI_KUBELET_ORACLE={} is not a file",
            p.display()
        );
        return p;
    }
    let script = repo_root().join("scripts/kubelet-oracle.sh");
    let out = Command::new(&script)
        .arg("install")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} install failed ({}); its messages are above",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "{} install printed no binary path: {stdout:?}",
        script.display()
    );
    path
}

fn oracle_output(oracle: &Path, command: &str) -> String {
    let out = Command::new(oracle)
        .arg(command)
        .output()
        .unwrap_or_else(|e| panic!("running {} {command}: {e}", oracle.display()));
    assert!(
        out.status.success(),
        "{} {command} failed: {}",
        oracle.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the oracle prints UTF-8")
}

/// One query per case, answers in the same order.
fn ask_oracle(oracle: &Path, cases: &[Case]) -> Vec<Answer> {
    let queries: Vec<String> = cases
        .iter()
        .map(|c| {
            let secrets: Vec<String> = c
                .secrets
                .iter()
                .map(|s| String::from_utf8(s.data()).expect("built JSON is UTF-8"))
                .collect();
            serde_json::json!({ "secrets": secrets, "image": c.image }).to_string()
        })
        .collect();
    let mut child = Command::new(oracle)
        .arg("lookup")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {} lookup: {e}", oracle.display()));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || {
        let mut w = std::io::BufWriter::new(&mut stdin);
        for q in queries {
            w.write_all(q.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let answers: Vec<Answer> = BufReader::new(stdout)
        .lines()
        .map(|line| {
            let line = line.expect("reading the oracle's answers");
            serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("oracle answer {line:?} is not an answer: {e}"))
        })
        .collect();
    writer
        .join()
        .expect("writer thread")
        .expect("writing queries to the oracle");
    let status = child.wait().expect("waiting for the oracle");
    assert!(status.success(), "the oracle failed: {status}");
    assert_eq!(answers.len(), cases.len(), "the oracle answered too few");
    answers
}

#[derive(Deserialize)]
struct CorpusFile {
    file: String,
    literals: Vec<String>,
}

/// Every literal of keyring_test.go as an auths key, against every literal of all the
/// upstream tests (and keyring_test.go's with an `/app` path, since its targets are bare
/// hosts) as an image.
fn upstream_cases(oracle: &Path) -> Vec<Case> {
    let corpus: Vec<CorpusFile> = oracle_output(oracle, "corpus")
        .lines()
        .map(|l| serde_json::from_str(l).expect("corpus line"))
        .collect();
    assert!(
        corpus.len() >= 4,
        "the oracle's corpus has {} files",
        corpus.len()
    );
    let keyring = corpus
        .iter()
        .find(|f| f.file.ends_with("keyring_test.go"))
        .expect("keyring_test.go in the corpus");
    let mut images = BTreeSet::new();
    for f in &corpus {
        eprintln!(
            "kubelet oracle: {} literals from {}",
            f.literals.len(),
            f.file
        );
        images.extend(f.literals.iter().cloned());
    }
    for l in &keyring.literals {
        images.insert(format!("{l}/app"));
    }
    let mut cases = Vec::new();
    for key in &keyring.literals {
        for image in &images {
            cases.push(Case {
                secrets: vec![SecretSpec {
                    keys: vec![key.clone()],
                    config_hosts: None,
                }],
                image: image.clone(),
                origin: 1,
            });
        }
    }
    cases
}

// ------------------------------------------------------------------------------------------
// Checking one case

/// One pull Secret of a Pod.
#[derive(Debug, Clone)]
struct SecretSpec {
    /// Its `auths` keys: the host patterns as written (and as the sync task writes them),
    /// or the keys of a `dockerConfig` file.
    keys: Vec<String>,
    /// For a `dockerConfig` registry: the config's `hosts` (the webhook matches these).
    config_hosts: Option<Vec<String>>,
}

impl SecretSpec {
    fn hosts(&self) -> &[String] {
        self.config_hosts.as_deref().unwrap_or(&self.keys)
    }

    /// The `.dockerconfigjson`, as the sync task writes it (or a docker config file with
    /// these keys).
    fn data(&self) -> Vec<u8> {
        dockerconfig::build(&self.keys, "user", "password")
    }
}

#[derive(Debug, Clone)]
struct Case {
    secrets: Vec<SecretSpec>,
    image: String,
    /// Generated (0) or from the upstream tests (1), for the statistics.
    origin: usize,
}

#[derive(Default)]
struct Report {
    seed: u64,
    kinds: std::collections::BTreeMap<&'static str, usize>,
    failures: Vec<String>,
    failure_count: usize,
    /// Per origin (generated, upstream): cases where kubelet used a Secret, and where it
    /// refused the image.
    used: [usize; 2],
    invalid_images: [usize; 2],
    refused_patterns: usize,
    one_char_skipped: usize,
}

impl Report {
    fn new(seed: u64) -> Self {
        Report {
            seed,
            ..Report::default()
        }
    }

    fn fail(&mut self, case: &Case, answer: Option<&Answer>, kind: &'static str, what: String) {
        self.failure_count += 1;
        *self.kinds.entry(kind).or_default() += 1;
        if self.failures.len() < SHOWN {
            self.failures.push(format!(
                "{what}\n    image {:?}, secrets {:?}\n    kubelet: {answer:?}",
                case.image,
                case.secrets
                    .iter()
                    .map(|s| match &s.config_hosts {
                        None => format!("keys {:?}", s.keys),
                        Some(h) => format!("dockerConfig keys {:?} hosts {h:?}", s.keys),
                    })
                    .collect::<Vec<_>>()
            ));
        }
    }

    fn finish(self) {
        assert!(
            self.failure_count == 0,
            "{} disagreements with kubelet (seed {}, replay with PSI_ORACLE_SEED={}), by kind {:?}; the first {}:\n\n{}",
            self.failure_count,
            self.seed,
            self.seed,
            self.kinds,
            self.failures.len(),
            self.failures.join("\n\n")
        );
    }
}

/// Checks one case; returns the Secrets the webhook injects when the config is accepted and
/// the image parses (for the explain sample).
fn check_case(case: &Case, answer: &Answer, report: &mut Report) -> Option<BTreeSet<usize>> {
    let kubelet_used: BTreeSet<usize> = answer.used.iter().copied().collect();
    if !kubelet_used.is_empty() {
        report.used[case.origin] += 1;
    }
    if let Some(e) = &answer.error
        && e.starts_with("pull secrets:")
    {
        report.fail(
            case,
            Some(answer),
            "secrets",
            format!("kubelet cannot read the Secrets: {e}"),
        );
        return None;
    }

    // The image: refused by both or by neither, and the same name.
    let image = match (ImageRef::parse(&case.image), &answer.error) {
        (Ok(img), None) => {
            let name = format!("{}/{}", img.registry(), img.repository());
            if answer.name.as_deref() != Some(name.as_str()) {
                report.fail(
                    case,
                    Some(answer),
                    "name",
                    format!("the project names the image {name:?}"),
                );
            }
            img
        }
        (Err(_), Some(_)) => {
            report.invalid_images[case.origin] += 1;
            return None;
        }
        (Ok(img), Some(_)) => {
            report.fail(
                case,
                Some(answer),
                "image accepted",
                format!("the project accepts the image as {img}, kubelet refuses it"),
            );
            return None;
        }
        (Err(e), None) => {
            report.fail(
                case,
                Some(answer),
                "image refused",
                format!("the project refuses the image ({e}), kubelet accepts it"),
            );
            return None;
        }
    };

    // What the project says kubelet does with every key, accepted or refused.
    let mut one_char_only = false;
    let mut model_entries = Vec::new();
    for (i, secret) in case.secrets.iter().enumerate() {
        let mut patterns = Vec::new();
        for key in &secret.keys {
            match HostPattern::parse(key) {
                Ok(p) => patterns.push(p),
                Err(e) => {
                    report.refused_patterns += 1;
                    if !e.to_string().contains(&format!("{key:?}")) && !key.is_empty() {
                        report.fail(
                            case,
                            Some(answer),
                            "quote",
                            format!("refusal does not quote {key:?}: {e}"),
                        );
                    }
                    match e.kubelet_use() {
                        KubeletUse::Never => {}
                        KubeletUse::OneCharacterHosts => one_char_only = true,
                        KubeletUse::SameAs(other) => match HostPattern::parse(other) {
                            Ok(p) => patterns.push(p),
                            Err(e2) => report.fail(
                                case,
                                Some(answer),
                                "claim",
                                format!(
                                    "{key:?} is refused as {other:?}, which is refused too: {e2}"
                                ),
                            ),
                        },
                    }
                }
            }
        }
        model_entries.push(RegistryEntry::new(i.to_string(), format!("s{i}"), patterns));
    }
    let model = used_by(&Registries::new(model_entries), &image);
    if one_char_only && image.host().chars().count() == 1 {
        report.one_char_skipped += 1;
    } else if model != kubelet_used {
        report.fail(
            case,
            Some(answer),
            "model",
            format!(
                "the project says kubelet uses Secrets {model:?}, kubelet uses {kubelet_used:?}"
            ),
        );
    }

    // The webhook, when the config is accepted.
    let mut entries = Vec::new();
    for (i, secret) in case.secrets.iter().enumerate() {
        let Ok(hosts) = secret
            .hosts()
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, PatternError>>()
        else {
            return None;
        };
        if secret.config_hosts.is_some() {
            let file = dockerconfig::parse(&secret.data()).expect("a built docker config parses");
            if let Err(e) = check_auths_keys(&hosts, file.auths.keys().map(String::as_str)) {
                if secret.config_hosts.as_deref() == Some(&secret.keys[..]) {
                    report.fail(
                        case,
                        Some(answer),
                        "docker config",
                        format!("a docker config whose keys are its hosts is refused: {e}"),
                    );
                }
                return None;
            }
        }
        entries.push(RegistryEntry::new(i.to_string(), format!("s{i}"), hosts));
    }
    let webhook = used_by(&Registries::new(entries), &image);
    if webhook != kubelet_used {
        report.fail(
            case,
            Some(answer),
            "webhook",
            format!("the webhook injects Secrets {webhook:?}, kubelet uses {kubelet_used:?}"),
        );
    }
    Some(webhook)
}

fn used_by(registries: &Registries, image: &ImageRef<'_>) -> BTreeSet<usize> {
    registries
        .matching(*image)
        .map(|e| {
            e.name()
                .parse::<usize>()
                .expect("entries are named by index")
        })
        .collect()
}

/// A config with one registry per host list, named r0, r1... with Secrets s0, s1... and
/// static credentials (their file is read only by `run` and `check`).
fn config_yaml<'h>(hosts: impl Iterator<Item = &'h [String]>) -> String {
    let mut yaml = String::from("registries:\n");
    for (i, h) in hosts.enumerate() {
        let list = serde_json::to_string(h).expect("strings serialise");
        yaml.push_str(&format!(
            "  - name: r{i}\n    hosts: {list}\n    secretName: s{i}\n    credentials:\n      basic: {{ username: u, passwordFile: /nonexistent/password }}\n"
        ));
    }
    yaml
}

/// The config with these registries (static credentials) is accepted exactly when every
/// host pattern is, and a refusal carries the pattern's message.
fn check_config(hosts: &[Vec<String>], report: &mut Report, case: &Case) {
    let yaml = config_yaml(hosts.iter().map(Vec::as_slice));
    let refusals: Vec<PatternError> = hosts
        .iter()
        .flatten()
        .filter_map(|h| HostPattern::parse(h).err())
        .collect();
    let duplicates = hosts
        .iter()
        .any(|h| h.iter().collect::<HashSet<_>>().len() != h.len());
    match Settings::from_yaml(&yaml, Path::new("oracle.yaml")) {
        Ok(_) if refusals.is_empty() => {}
        Ok(_) => report.fail(
            case,
            None,
            "config accepts",
            format!(
                "the config accepts hosts {hosts:?} although {} is refused",
                refusals[0]
            ),
        ),
        Err(e) => {
            let text = e.to_string();
            if refusals.is_empty() && !duplicates {
                report.fail(
                    case,
                    None,
                    "config refuses",
                    format!("the config refuses hosts {hosts:?}: {text}"),
                );
            }
            for r in &refusals {
                if !text.contains(&r.to_string()) {
                    report.fail(
                        case,
                        None,
                        "config message",
                        format!("the config's error lacks the pattern's message {r}: {text}"),
                    );
                }
            }
        }
    }
}

/// The sample through the real binary: `explain` injects what the library decided.
fn check_explain(sample: &[(Case, BTreeSet<usize>)], report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (n, (case, used)) in sample.iter().enumerate() {
        let yaml = config_yaml(case.secrets.iter().map(SecretSpec::hosts));
        let config = dir.path().join(format!("config-{n}.yaml"));
        std::fs::write(&config, yaml).expect("writing a config");
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": case.image}]}
        });
        let pod_file = dir.path().join(format!("pod-{n}.json"));
        std::fs::write(&pod_file, pod.to_string()).expect("writing a pod");
        let out = Command::new(env!("CARGO_BIN_EXE_pullsecret-injector"))
            .args(["explain", "--config"])
            .arg(&config)
            .arg("-f")
            .arg(&pod_file)
            .env_remove("PULLSECRET_INJECTOR_CONFIG")
            .output()
            .expect("running explain");
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            report.fail(
                case,
                None,
                "explain",
                format!("explain failed: {}", String::from_utf8_lossy(&out.stderr)),
            );
            continue;
        }
        let secrets: Vec<String> = stdout
            .lines()
            .find_map(|l| l.strip_prefix("secrets: "))
            .map(|l| serde_json::from_str(l).expect("explain prints the secrets as JSON"))
            .unwrap_or_default();
        let want: Vec<String> = used.iter().map(|i| format!("s{i}")).collect();
        let got: BTreeSet<&String> = secrets.iter().collect();
        if got != want.iter().collect() {
            report.fail(
                case,
                None,
                "explain",
                format!("explain injects {secrets:?}, expected {want:?}"),
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// The generator

const LABELS: &[&str] = &[
    "cr",
    "yandex",
    "example",
    "com",
    "io",
    "net",
    "registry",
    "a",
    "b",
    "eu",
    "gcr",
    "quay",
    "ghcr",
    "k8s",
    "docker",
    "index",
    "registry-1",
    "my-reg",
    "x1",
    "0",
    "yandexcloud",
];
const ODD_LABELS: &[&str] = &[
    "my_reg",
    "a_b",
    "A",
    "Cr",
    "EXAMPLE",
    "-a",
    "a-",
    "xn--e1afmkfd",
    "a--b",
    "1",
    "255",
    "256",
    "",
    "a b",
    "é",
];
const DOCKER_HUB: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "DOCKER.IO",
    "Index.docker.io",
];
const SINGLE: &[&str] = &[
    "localhost",
    "LOCALHOST",
    "Localhost",
    "Registry",
    "R",
    "registry",
    "a",
    "A",
    "z",
    "1",
];
const IPV4: &[&str] = &[
    "10.0.0.1",
    "127.0.0.1",
    "192.168.1.254",
    "1.2.3",
    "256.1.1.1",
    "01.2.3.4",
    "0.0.0.0",
];
const IPV6: &[&str] = &[
    "[::1]",
    "[2001:db8::1]",
    "[2001:DB8::1]",
    "[0:0:0:0:0:0:0:1]",
    "[::]",
    "[1]",
    "[::1:]",
    "[abc]",
    "[::A]",
    "[a]",
    "[fe80::1%25eth0]",
    "[::ffff:1.2.3.4]",
    "[1:2:3:4:5:6:7:8]",
    "[1:2:3:4:5:6:7:8:9]",
    "[::1::2]",
    "[beef]",
    "[0]",
    "[12345::1]",
];
const WEIRD_HOSTS: &[&str] = &[
    "foo_bar.com",
    "a_b.example.com",
    "my_reg.corp.io",
    "UPPER.example.com",
    "cr.yandex.",
    "-cr.yandex",
    "cr..yandex",
    "реестр.рф",
    "a.b.c.d.e",
    "a-b.c_d.e",
    "x.y_",
];
const PORTS: &[&str] = &["5000", "443", "80", "05000", "1", "65535", "65536", "0"];
const PATHS: &[&str] = &[
    "app", "crp1", "crp12", "crp1x", "library", "nginx", "team", "b-c", "a.b", "a_b", "a__b", "v1",
    "v2", "x", "0", "team/app",
];
const ODD_PATHS: &[&str] = &[
    "Upper", "-bad", "a..b", "a___b", "_x", "x-", "a--b", "ab.-c", "", "a b", "a%2Fb",
];
const TAGS: &[&str] = &[
    "1", "latest", "v1.2.3", "V1", "_x", "-bad", "1.0-rc.1", "a:b",
];
const SPECIAL_PATTERNS: &[&str] = &[
    "docker.io",
    "index.docker.io",
    "https://index.docker.io/v1/",
    "index.docker.io/v2/",
    "http://index.docker.io/v1/",
    "index.docker.io:443",
    "https://index.docker.io:443/v1/",
    "index.docker.io/",
    "index.docker.io:",
    "registry-1.docker.io",
    "*.docker.io",
    "docker.io/library",
    "docker.io/library/",
    "index.docker.io/library",
    "*",
    "*.*",
    "*:5000",
    "**",
    "*]",
    "localhost",
    "localhost:5000",
    "[::1]:5000",
    "[::1]",
    "[::A]",
    "[a]",
    "[abc]:5000",
    "[0]:5000",
    "[beef]:443",
    "[::ffff:1.2.3.4]",
    "[::ffff:1.2.3.4]:5000",
    "[fe80::1%25eth0]:5000",
    "cr.yandex:",
    "cr.yandex::443",
    "cr.yandex:443:1",
    "",
    "https://",
    "/",
    "cr.yandex/v2/",
    "cr.yandex/v1",
    "cr.yandex/v2/crp1",
    "CR.YANDEX",
    "*.com",
    "*.example.com",
    "foo_bar.com",
    "*.io",
    "user@cr.yandex",
    "user:pw@cr.yandex:443/crp1",
    "cr.yandex?x",
    "cr.yandex/crp1?",
    "cr.yandex#f",
    "cr.yandex/cr%70",
    "cr.yandex/crp1%2F",
    "c%72.yandex",
    "cr.yandex/a%zz",
    "cr.yandex/%2561",
    "ftp://cr.yandex",
    "oci://cr.yandex/crp1",
    "HTTPS://cr.yandex",
    "https://https://cr.yandex",
    "cr.yandex/CRP1",
    "cr.yandex//crp1",
    "cr.yandex/-x",
    "cr.yandex\t",
    " cr.yandex",
    "cr yandex",
    "registry",
    "Registry",
    "r",
    "A",
    "[::ffff:1.2.3.4]:1",
    "u:p@cr.yandex/crp?x#y",
    "cr.yandex/a%2Fb",
    "cr.yandex:/v2/",
    "c%C3%A9.io",
    "[1.2.3.4]:1",
    "[::1%25]:1",
    "c%41.io",
    "cr.yandex/%zz",
    "a[b].io",
    "u\\@cr.yandex",
    "cr.yandex/%25zz",
    "[0:0:0:0:0:0:0:1]:5000",
];
const SHA256_HEX: &str = "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

/// An image as generated, with the parts patterns are derived from.
struct ImageSpec {
    host: Option<String>,
    port: Option<String>,
    path: String,
    text: String,
}

struct Generator {
    rng: fastrand::Rng,
}

impl Generator {
    fn new(seed: u64) -> Self {
        Generator {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.rng.usize(..items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.rng.usize(..100) < percent
    }

    /// `n` items joined by `separator`, each from `odd` with `odd_percent` % chance, else
    /// from `usual`.
    fn join(
        &mut self,
        n: usize,
        separator: &str,
        usual: &[&str],
        odd_percent: usize,
        odd: &[&str],
    ) -> String {
        (0..n)
            .map(|_| {
                if self.chance(odd_percent) {
                    self.pick(odd)
                } else {
                    self.pick(usual)
                }
            })
            .collect::<Vec<_>>()
            .join(separator)
    }

    fn case(&mut self) -> Case {
        let image = self.image();
        let n = match self.rng.usize(..100) {
            0..=64 => 1,
            65..=89 => 2,
            _ => 3,
        };
        let mut secrets = Vec::new();
        for _ in 0..n {
            let keys = match self.rng.usize(..100) {
                0..=74 => 1,
                75..=94 => 2,
                _ => 3,
            };
            let mut list: Vec<String> = Vec::new();
            for _ in 0..keys {
                let p = self.pattern(&image);
                if !list.contains(&p) {
                    list.push(p);
                }
            }
            let config_hosts = self
                .chance(20)
                .then(|| self.docker_config_hosts(&list, &image));
            secrets.push(SecretSpec {
                keys: list,
                config_hosts,
            });
        }
        // Docker Hub images meet the fallback key next to other keys often.
        let hub_like = image
            .host
            .as_deref()
            .is_none_or(|h| DOCKER_HUB.contains(&h) || SINGLE.contains(&h));
        if hub_like && self.chance(30) {
            secrets.push(SecretSpec {
                keys: vec![
                    self.pick(&["index.docker.io", "https://index.docker.io/v1/"])
                        .into(),
                ],
                config_hosts: None,
            });
        }
        Case {
            secrets,
            image: image.text,
            origin: 0,
        }
    }

    /// The `hosts` of a `dockerConfig` registry whose file has `keys`: mostly the keys,
    /// sometimes written another way, or not quite the keys.
    fn docker_config_hosts(&mut self, keys: &[String], image: &ImageSpec) -> Vec<String> {
        let mut hosts = keys.to_vec();
        match self.rng.usize(..100) {
            0..=59 => {}
            60..=74 => {
                for h in &mut hosts {
                    if !h.contains("://") {
                        *h = format!("https://{h}/v1/");
                    }
                }
            }
            75..=84 if hosts.len() > 1 => {
                hosts.pop();
            }
            85..=94 => {
                let extra = self.pattern(image);
                if !hosts.contains(&extra) {
                    hosts.push(extra);
                }
            }
            _ => hosts.reverse(),
        }
        hosts
    }

    fn host(&mut self) -> String {
        match self.rng.usize(..100) {
            0..=44 => {
                let n = match self.rng.usize(..100) {
                    0..=9 => 1,
                    10..=49 => 2,
                    50..=84 => 3,
                    _ => 4,
                };
                self.join(n, ".", LABELS, 4, ODD_LABELS)
            }
            45..=54 => self.pick(DOCKER_HUB).into(),
            55..=64 => self.pick(SINGLE).into(),
            65..=72 => self.pick(IPV4).into(),
            73..=86 => self.pick(IPV6).into(),
            _ => self.pick(WEIRD_HOSTS).into(),
        }
    }

    fn port(&mut self) -> Option<String> {
        self.chance(40).then(|| self.pick(PORTS).into())
    }

    fn path(&mut self) -> String {
        let n = 1 + self.rng.usize(..3);
        self.join(n, "/", PATHS, 3, ODD_PATHS)
    }

    fn image(&mut self) -> ImageSpec {
        let host = self.chance(85).then(|| self.host());
        let port = if host.is_some() { self.port() } else { None };
        let mut path = self.path();
        if host.as_deref().is_some_and(|h| DOCKER_HUB.contains(&h)) && self.chance(30) {
            path = format!("library/{path}");
        }
        let mut text = match (&host, &port) {
            (Some(h), Some(p)) => format!("{h}:{p}/{path}"),
            (Some(h), None) => format!("{h}/{path}"),
            (None, _) => path.clone(),
        };
        if self.chance(40) {
            let tag = if self.chance(3) {
                "t".repeat(128 + self.rng.usize(..2))
            } else {
                self.pick(TAGS).into()
            };
            text = format!("{text}:{tag}");
        }
        if self.chance(20) {
            let digest = match self.rng.usize(..14) {
                0..=6 => format!("sha256:{SHA256_HEX}"),
                7 => format!("sha384:{}", "ab".repeat(48)),
                8 => format!("sha512:{}", "0f".repeat(64)),
                9 => format!("sha256:{}", SHA256_HEX.to_uppercase()),
                10 => format!("sha256:{}", &SHA256_HEX[1..]),
                11 => format!("md5:{}", &SHA256_HEX[..32]),
                _ => format!(
                    "{}:{SHA256_HEX}",
                    self.pick(&["SHA256", "blake3", "sha-256", "sha256+b64"])
                ),
            };
            text = format!("{text}@{digest}");
        }
        if self.chance(3) {
            text = match self.rng.usize(..8) {
                0 => text.replacen('/', "//", 1),
                1 => format!("{text}:"),
                2 => format!("/{text}"),
                3 => format!("{text} "),
                4 => format!("{text}@"),
                5 => String::new(),
                6 => SHA256_HEX.into(),
                _ => text.to_uppercase(),
            };
        }
        ImageSpec {
            host,
            port,
            path,
            text,
        }
    }

    /// A host pattern, mostly derived from the image so that about half match.
    fn pattern(&mut self, image: &ImageSpec) -> String {
        if self.chance(7) {
            return self.pick(SPECIAL_PATTERNS).into();
        }
        let (mut host, mut port) = if self.chance(75) {
            let host = image
                .host
                .clone()
                .unwrap_or_else(|| self.pick(&["docker.io", "index.docker.io"]).into());
            (host, image.port.clone())
        } else {
            (self.host(), self.port())
        };
        if self.chance(45) {
            host = self.glob(&host);
        }
        if self.chance(20) {
            port = match self.rng.usize(..4) {
                0 => None,
                1 => Some(String::new()),
                _ => Some(self.pick(PORTS).into()),
            };
        }
        let mut s = host;
        if let Some(p) = &port {
            s = format!("{s}:{p}");
        }
        if self.chance(45) {
            let path = if self.chance(75) {
                image.path.clone()
            } else {
                self.path()
            };
            let path = match self.rng.usize(..5) {
                0 => path,
                1 => format!("{path}/"),
                2 => path.split('/').next().unwrap_or_default().into(),
                3 => {
                    let cut = self.rng.usize(..=path.len());
                    path.get(..cut).unwrap_or(&path).into()
                }
                _ => path.to_uppercase(),
            };
            s = format!("{s}/{path}");
        }
        if self.chance(12) {
            s = format!(
                "{}{s}",
                self.pick(&[
                    "https://",
                    "http://",
                    "HTTPS://",
                    "ftp://",
                    "https://https://"
                ])
            );
        }
        if self.chance(10) {
            let (authority, rest) = match s
                .find("://")
                .map(|i| i + 3)
                .and_then(|start| s[start..].find('/').map(|j| start + j))
            {
                Some(i) => (s[..i].to_string(), s[i..].to_string()),
                None => match (!s.contains("://")).then(|| s.find('/')).flatten() {
                    Some(i) => (s[..i].to_string(), s[i..].to_string()),
                    None => (s.clone(), String::new()),
                },
            };
            let v = self.pick(&["/v1/", "/v2/", "/v2", "/v1"]);
            s = format!("{authority}{v}{}", rest.trim_start_matches('/'));
        }
        if self.chance(8) {
            s.push('/');
        }
        if self.chance(6) {
            s = match self.rng.usize(..7) {
                0 => format!("{s}?x=1"),
                1 => format!("{s}#frag"),
                2 => format!("u:p@{s}"),
                3 => s.replacen('.', "%2E", 1),
                4 => s.replacen('/', "%2F", 1),
                5 => format!("[{s}]"),
                _ => format!("{s} "),
            };
        }
        s
    }

    /// The host with globs: one label, all labels, or partial globs within a label.
    fn glob(&mut self, host: &str) -> String {
        let mut labels: Vec<String> = host.split('.').map(str::to_owned).collect();
        match self.rng.usize(..6) {
            0 => labels.iter_mut().for_each(|l| *l = "*".into()),
            1 => labels.insert(0, "*".into()),
            2 if labels.len() > 1 => {
                labels.remove(0);
            }
            _ => {
                let i = self.rng.usize(..labels.len());
                let l = labels[i].clone();
                labels[i] = match self.rng.usize(..6) {
                    0 => "*".into(),
                    1 => format!("{}*", l.chars().next().unwrap_or('x')),
                    2 => format!("*{}", l.chars().last().unwrap_or('x')),
                    3 => format!("*{l}*"),
                    4 => "**".into(),
                    _ => format!(
                        "{}*{}",
                        l.get(..1).unwrap_or(""),
                        l.get(l.len().saturating_sub(1)..).unwrap_or("")
                    ),
                };
            }
        }
        labels.join(".")
    }
}
