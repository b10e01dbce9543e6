//! Test keys generated at test time with the `openssl` CLI (no key is committed).

use std::io::Write;
use std::process::{Command, Stdio};

/// An RSA key in every form the tests need.
pub(crate) struct TestKey {
    pub bits: usize,
    pub private_pkcs8_pem: String,
    pub private_pkcs1_pem: String,
    pub public_pkcs1_der: Vec<u8>,
    pub public_spki_pem: String,
}

pub(crate) fn openssl(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl CLI is installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin)
        .expect("writing to openssl");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl TestKey {
    /// A fresh RSA key of `bits`.
    pub fn rsa(bits: usize) -> Self {
        let pem = Self::rsa_pkcs8_pem(bits);
        let public_pkcs1_der = openssl(
            &["rsa", "-RSAPublicKey_out", "-outform", "DER"],
            pem.as_bytes(),
        );
        let public_spki_pem =
            String::from_utf8(openssl(&["pkey", "-pubout"], pem.as_bytes())).unwrap();
        let private_pkcs1_pem =
            String::from_utf8(openssl(&["rsa", "-traditional"], pem.as_bytes())).unwrap();
        assert!(private_pkcs1_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        Self {
            bits,
            private_pkcs8_pem: pem,
            private_pkcs1_pem,
            public_pkcs1_der,
            public_spki_pem,
        }
    }

    /// PKCS#8 PEM of a fresh RSA key of any size (for refused sizes too).
    pub fn rsa_pkcs8_pem(bits: usize) -> String {
        let bits = format!("rsa_keygen_bits:{bits}");
        String::from_utf8(openssl(
            &["genpkey", "-algorithm", "RSA", "-pkeyopt", &bits],
            b"",
        ))
        .unwrap()
    }

    /// PKCS#8 PEM of a fresh P-256 key.
    pub fn ec_pkcs8_pem() -> String {
        String::from_utf8(openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            b"",
        ))
        .unwrap()
    }
}

/// A key file as `yc iam key create` writes it.
pub(crate) fn key_file_json(key: &TestKey, id: &str, sa: &str, prefix: bool) -> String {
    let private_key = if prefix {
        format!(
            "PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID <{id}>\n{}",
            key.private_pkcs8_pem
        )
    } else {
        key.private_pkcs8_pem.clone()
    };
    let algorithm = format!("RSA_{}", key.bits);
    serde_json::to_string_pretty(&serde_json::json!({
        "id": id,
        "service_account_id": sa,
        "created_at": "2025-02-11T09:30:12.071263817Z",
        "key_algorithm": algorithm,
        "public_key": key.public_spki_pem,
        "private_key": private_key,
    }))
    .unwrap()
}

/// The same key as the IAM REST API `Key.Create` answers it (and Terraform saves it).
pub(crate) fn rest_key_json(key: &TestKey, id: &str, sa: &str) -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "key": {
            "id": id,
            "serviceAccountId": sa,
            "createdAt": "2025-02-11T09:30:12.071263817Z",
            "description": "",
            "keyAlgorithm": format!("RSA_{}", key.bits),
            "publicKey": key.public_spki_pem,
        },
        "privateKey": key.private_pkcs8_pem,
    }))
    .unwrap()
}
