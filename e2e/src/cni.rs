// SPDX-License-Identifier: Apache-2.0
//! Driving CNI plugins the way libcni does, inside a test-bed host: the six
//! `CNI_*` variables always exported (empty when unused), the config on
//! stdin, and for a conflist the chain logic: each plugin entry gets `name`,
//! `cniVersion`, the previous plugin's result as `prevResult` and the
//! `runtimeConfig` of the capabilities it declares; DEL runs in reverse
//! order with the final result; CHECK in order with it.
//!
//! Plugins run through [`Host::cmd`], so they act on the host's namespace
//! and never on the root one. `CNI_PATH` is the project's binary directory,
//! then the current reference plugins built with the real cluster's tools
//! (`$WEAVE_K8S_TOOLS/cni`, v1.10, which speak CNI 1.1) when set, then
//! Debian's (`/usr/lib/cni`, up to CNI 1.0).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::{bin_dir, Host};

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// What a plugin call printed and how it exited.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status code (`-1` if killed by a signal).
    pub status: i32,
    /// stdout.
    pub stdout: String,
    /// stderr (the plugin's logs).
    pub stderr: String,
}

impl Output {
    /// stdout parsed as the one JSON document it must be (`Null` if empty).
    pub fn json(&self) -> Result<Value> {
        if self.stdout.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not one JSON document: {:?}", self.stdout))
    }

    /// The result on success; an error with the plugin's answer otherwise.
    pub fn ok(&self) -> Result<Value> {
        if self.status != 0 {
            bail!(
                "plugin failed ({}): {}\nstderr: {}",
                self.status,
                self.stdout.trim(),
                self.stderr.trim()
            );
        }
        self.json()
    }

    /// The CNI error code of a failed call (checks the error document's shape).
    pub fn error_code(&self) -> Result<u64> {
        if self.status == 0 {
            bail!("plugin succeeded, expected an error: {}", self.stdout);
        }
        let doc = self.json()?;
        let code = doc["code"]
            .as_u64()
            .with_context(|| format!("error document without code: {doc}"))?;
        if !doc["msg"].is_string() {
            bail!("error document without msg: {doc}");
        }
        Ok(code)
    }
}

/// The attachment a call is about.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (empty for none).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl Attachment {
    /// `eth0` of container `id` in the pod namespace named `ns`.
    pub fn new(id: &str, ns: &str) -> Attachment {
        Attachment {
            container_id: id.to_string(),
            netns: netns_path(ns).display().to_string(),
            ifname: "eth0".to_string(),
        }
    }
}

/// Path of the named namespace `ns`.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/run/netns").join(ns)
}

/// `CNI_PATH`: the project's binaries, then the reference plugins (current ones first).
pub fn cni_path() -> String {
    let current = std::env::var_os(crate::cluster::TOOLS_ENV)
        .filter(|dir| !dir.is_empty())
        .map(|dir| format!(":{}", Path::new(&dir).join("cni").display()))
        .unwrap_or_default();
    format!("{}{current}:{REFERENCE_DIR}", bin_dir().display())
}

/// Finds plugin `kind` in `CNI_PATH`.
pub fn plugin_path(kind: &str) -> Result<PathBuf> {
    for dir in cni_path().split(':') {
        let p = Path::new(dir).join(kind);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "CNI plugin {kind} not found in {} (install containernetworking-plugins, build the workspace)",
        cni_path()
    )
}

/// Runs plugin `kind` on `host` with `command`, the attachment `att` (or
/// all-empty variables) and `stdin`.
pub fn invoke(
    host: &Host,
    kind: &str,
    command: &str,
    att: Option<&Attachment>,
    stdin: &Value,
) -> Result<Output> {
    invoke_raw(host, kind, command, att, stdin.to_string().as_bytes(), &[])
}

/// Like [`invoke`] with raw stdin bytes and extra environment (overrides).
pub fn invoke_raw(
    host: &Host,
    kind: &str,
    command: &str,
    att: Option<&Attachment>,
    stdin: &[u8],
    env: &[(&str, &str)],
) -> Result<Output> {
    let program = plugin_path(kind)?;
    let mut cmd = host.cmd(&program);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", att.map_or("", |a| &a.container_id))
        .env("CNI_NETNS", att.map_or("", |a| &a.netns))
        .env("CNI_IFNAME", att.map_or("", |a| &a.ifname))
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default")
        .env("CNI_PATH", cni_path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("start {}", program.display()))?;
    child
        .stdin
        .take()
        .context("stdin is piped")?
        .write_all(stdin)
        .context("write the config to the plugin")?;
    let out = child.wait_with_output().context("wait for the plugin")?;
    Ok(Output {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A network configuration list, run the way libcni runs it.
#[derive(Debug, Clone)]
pub struct ConfList {
    /// The whole list (`cniVersion`, `name`, `plugins`).
    pub list: Value,
    /// What the runtime supplies for capabilities (`portMappings`, …).
    pub runtime_config: Map<String, Value>,
}

impl ConfList {
    /// A list from its JSON.
    pub fn new(list: Value) -> ConfList {
        ConfList {
            list,
            runtime_config: Map::new(),
        }
    }

    /// The list's `cniVersion`.
    pub fn version(&self) -> &str {
        self.list["cniVersion"].as_str().unwrap_or_default()
    }

    fn plugins(&self) -> Result<Vec<Value>> {
        self.list["plugins"]
            .as_array()
            .cloned()
            .context("conflist without plugins")
    }

    /// The stdin of plugin entry `p` (libcni's `buildOneConfig`).
    pub fn entry_config(&self, p: &Value, prev: Option<&Value>) -> Value {
        let mut conf = p.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), self.list["name"].clone());
        conf.insert("cniVersion".into(), self.list["cniVersion"].clone());
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        let mut rc = Map::new();
        if let Some(caps) = p["capabilities"].as_object() {
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(v) = self.runtime_config.get(cap) {
                        rc.insert(cap.clone(), v.clone());
                    }
                }
            }
        }
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(conf)
    }

    /// ADD through the chain; returns the final result.
    pub fn add(&self, host: &Host, att: &Attachment) -> Result<Value> {
        let mut prev: Option<Value> = None;
        for p in self.plugins()? {
            let kind = p["type"].as_str().context("plugin without type")?;
            let out = invoke(
                host,
                kind,
                "ADD",
                Some(att),
                &self.entry_config(&p, prev.as_ref()),
            )?;
            prev = Some(out.ok().with_context(|| format!("ADD of {kind}"))?);
        }
        prev.context("empty chain")
    }

    /// CHECK through the chain with the final ADD result.
    pub fn check(&self, host: &Host, att: &Attachment, result: &Value) -> Result<()> {
        for p in self.plugins()? {
            let kind = p["type"].as_str().context("plugin without type")?;
            invoke(
                host,
                kind,
                "CHECK",
                Some(att),
                &self.entry_config(&p, Some(result)),
            )?
            .ok()
            .with_context(|| format!("CHECK of {kind}"))?;
        }
        Ok(())
    }

    /// DEL in reverse order, with the final ADD result if known (libcni
    /// sends it from 0.4.0 on).
    pub fn del(&self, host: &Host, att: &Attachment, result: Option<&Value>) -> Result<()> {
        let mut plugins = self.plugins()?;
        plugins.reverse();
        for p in plugins {
            let kind = p["type"].as_str().context("plugin without type")?;
            invoke(host, kind, "DEL", Some(att), &self.entry_config(&p, result))?
                .ok()
                .with_context(|| format!("DEL of {kind}"))?;
        }
        Ok(())
    }
}

/// The single-plugin conflist of `weave-net` talking to `host`'s agent.
pub fn weave_net_conf(host: &Host, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": "weave",
        "plugins": [{
            "type": "weave-net",
            "socket": crate::weave::api_socket(host),
            "hairpinMode": true,
        }]
    })
}
