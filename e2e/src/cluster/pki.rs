// SPDX-License-Identifier: Apache-2.0
//! Certificates and kubeconfigs of the real cluster, made with the `openssl` command.
//!
//! One CA signs everything: the API server's serving certificate, one client certificate per
//! component (its user and groups are what RBAC and the Node authorizer see), and the API
//! server's client certificate towards the kubelets. The service account tokens are signed by
//! a key pair of their own. Keys are P-256 (fast to make, accepted by every component). All
//! files live in one directory of the cluster and go with it.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::json;

use crate::command::run;

/// Validity of every certificate (the cluster lives for one test or one session).
const DAYS: &str = "30";
/// `openssl req` arguments for a new P-256 key.
const NEW_KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

/// What a leaf certificate is for.
#[derive(Debug, Clone)]
pub(crate) enum Usage {
    /// TLS client authentication.
    Client,
    /// TLS server authentication for these addresses and names.
    Server {
        /// IP subject alternative names.
        ips: Vec<Ipv4Addr>,
        /// DNS subject alternative names.
        names: Vec<String>,
    },
}

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub(crate) struct KeyPair {
    /// PEM certificate.
    pub(crate) cert: PathBuf,
    /// PEM private key.
    pub(crate) key: PathBuf,
}

/// The cluster's CA and the files made from it.
#[derive(Debug)]
pub(crate) struct Pki {
    /// Directory of every file.
    dir: PathBuf,
}

impl Pki {
    /// Makes a new CA and the service account key pair in `dir` (created).
    pub(crate) fn create(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let pki = Pki {
            dir: dir.to_owned(),
        };
        openssl(
            &[
                &["req", "-x509", "-new", "-nodes"][..],
                &NEW_KEY,
                &[
                    "-days",
                    DAYS,
                    "-subj",
                    "/CN=weave-cluster-ca",
                    "-keyout",
                    path_str(&pki.dir.join("ca.key"))?,
                    "-out",
                    path_str(&pki.ca())?,
                ],
            ]
            .concat(),
        )?;
        let sa_key = pki.dir.join("sa.key");
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            path_str(&sa_key)?,
        ])?;
        openssl(&[
            "pkey",
            "-in",
            path_str(&sa_key)?,
            "-pubout",
            "-out",
            path_str(&pki.dir.join("sa.pub"))?,
        ])?;
        Ok(pki)
    }

    /// The CA certificate.
    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The service account signing key pair: (private key, public key).
    pub(crate) fn service_account(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("sa.key"), self.dir.join("sa.pub"))
    }

    /// Issues `name.crt`/`name.key` for common name `cn` in groups `orgs`.
    pub(crate) fn issue(
        &self,
        name: &str,
        cn: &str,
        orgs: &[&str],
        usage: &Usage,
    ) -> Result<KeyPair> {
        let pair = KeyPair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        let csr = self.dir.join(format!("{name}.csr"));
        let serial = format!("0x{:030x}", rand::random::<u128>() >> 8);
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(&ext, extensions(usage))
            .with_context(|| format!("write {}", ext.display()))?;
        openssl(
            &[
                &["req", "-new", "-nodes"][..],
                &NEW_KEY,
                &[
                    "-subj",
                    &subject(cn, orgs),
                    "-keyout",
                    path_str(&pair.key)?,
                    "-out",
                    path_str(&csr)?,
                ],
            ]
            .concat(),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&csr)?,
            "-CA",
            path_str(&self.ca())?,
            "-CAkey",
            path_str(&self.dir.join("ca.key"))?,
            // A random serial per certificate: nodes issue theirs concurrently, and a shared
            // serial file would race.
            "-set_serial",
            &serial,
            "-days",
            DAYS,
            "-extfile",
            path_str(&ext)?,
            "-out",
            path_str(&pair.cert)?,
        ])?;
        Ok(pair)
    }

    /// Writes a kubeconfig at `path` for `server` authenticating with `pair`.
    pub(crate) fn write_kubeconfig(
        &self,
        path: &Path,
        server: &str,
        user: &str,
        pair: &KeyPair,
    ) -> Result<()> {
        let text = kubeconfig(server, &self.ca(), user, pair);
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
    }
}

/// A kubeconfig (JSON, which every client reads) with one cluster, user and context.
pub(crate) fn kubeconfig(server: &str, ca: &Path, user: &str, pair: &KeyPair) -> String {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "weave-cluster",
            "cluster": { "server": server, "certificate-authority": ca },
        }],
        "users": [{
            "name": user,
            "user": { "client-certificate": pair.cert, "client-key": pair.key },
        }],
        "contexts": [{
            "name": "weave-cluster",
            "context": { "cluster": "weave-cluster", "user": user },
        }],
        "current-context": "weave-cluster",
    });
    format!("{config:#}\n")
}

/// The `-subj` argument: groups as O, then the common name.
fn subject(cn: &str, orgs: &[&str]) -> String {
    let mut subject: String = orgs.iter().map(|o| format!("/O={o}")).collect();
    subject.push_str(&format!("/CN={cn}"));
    subject
}

/// The x509v3 extensions file for a leaf certificate.
fn extensions(usage: &Usage) -> String {
    let mut text = String::from(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n",
    );
    match usage {
        Usage::Client => text.push_str("extendedKeyUsage=clientAuth\n"),
        Usage::Server { ips, names } => {
            text.push_str("extendedKeyUsage=serverAuth\n");
            let sans: Vec<String> = ips
                .iter()
                .map(|ip| format!("IP:{ip}"))
                .chain(names.iter().map(|name| format!("DNS:{name}")))
                .collect();
            text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
    }
    text
}

/// Runs `openssl ARGS…`.
fn openssl(args: &[&str]) -> Result<()> {
    run(Command::new("openssl").args(args)).map(drop)
}

/// A path as UTF-8, for command arguments.
fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_lists_groups_then_name() {
        assert_eq!(
            subject("system:node:node-1", &["system:nodes"]),
            "/O=system:nodes/CN=system:node:node-1"
        );
        assert_eq!(subject("admin", &[]), "/CN=admin");
    }

    #[test]
    fn server_extensions_name_every_address() {
        let text = extensions(&Usage::Server {
            ips: vec![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(10, 96, 0, 1)],
            names: vec!["kubernetes".into()],
        });
        assert!(text.contains("extendedKeyUsage=serverAuth"), "{text}");
        assert!(
            text.contains("subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:kubernetes"),
            "{text}"
        );
    }

    #[test]
    fn issued_certificate_carries_user_and_groups() {
        let dir = std::env::temp_dir().join(format!("wv-pki-test-{}", std::process::id()));
        let pki = Pki::create(&dir).expect("CA");
        let pair = pki
            .issue(
                "admin",
                "kubernetes-admin",
                &["system:masters"],
                &Usage::Client,
            )
            .expect("issue");
        let text = run(Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in"])
            .arg(&pair.cert))
        .expect("read subject");
        assert!(text.contains("O = system:masters"), "{text}");
        assert!(text.contains("CN = kubernetes-admin"), "{text}");
        let verify = run(Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(pki.ca())
            .arg(&pair.cert))
        .expect("verify against the CA");
        assert!(verify.contains("OK"), "{verify}");
        std::fs::remove_dir_all(&dir).expect("remove test dir");
    }
}
