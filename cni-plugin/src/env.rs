// SPDX-License-Identifier: Apache-2.0
//! The `CNI_*` environment of one invocation (spec §"Parameters"), parsed
//! and validated up front so that a bad call fails with code 4 naming the
//! variable before anything is touched. Empty counts as unset, because
//! libcni exports all six variables on every call.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// The verb of the call (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment against `prevResult`.
    Check,
    /// Whether ADD can be served (spec 1.1).
    Status,
    /// Release everything not in `cni.dev/valid-attachments` (spec 1.1).
    Gc,
    /// Report the supported spec versions.
    Version,
}

/// One invocation's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// The verb.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (ADD, CHECK; optional on DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// The container's name from `CNI_ARGS` (`K8S_POD_NAME`, or `NAME` as
    /// other runtimes pass it), for weaveDNS.
    pub name: Option<String>,
}

impl Invocation {
    /// Parses the parameters from `get` (the process environment in
    /// production, a map in tests). `need_netns` is false for IPAM-only
    /// plugins, which never enter the namespace.
    pub fn parse(get: impl Fn(&str) -> Option<String>, need_netns: bool) -> Result<Invocation> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some("VERSION") => Command::Version,
            Some(other) => {
                return Err(Error::Env(format!(
                    "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                )))
            }
            None => return Err(Error::Env("CNI_COMMAND is not set".into())),
        };
        let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let mut missing = Vec::new();
        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        let ifname = var("CNI_IFNAME").unwrap_or_default();
        let netns = var("CNI_NETNS").map(PathBuf::from);
        if attachment {
            if container_id.is_empty() {
                missing.push("CNI_CONTAINERID");
            }
            if ifname.is_empty() {
                missing.push("CNI_IFNAME");
            }
            if need_netns && command != Command::Del && netns.is_none() {
                missing.push("CNI_NETNS");
            }
        }
        if !missing.is_empty() {
            return Err(Error::Env(format!(
                "required environment variables missing: {}",
                missing.join(", ")
            )));
        }
        if attachment {
            check_container_id(&container_id)?;
            check_ifname(&ifname)?;
        }
        Ok(Invocation {
            command,
            container_id,
            netns,
            ifname,
            name: var("CNI_ARGS").and_then(|a| cni_arg_name(&a)),
        })
    }
}

/// The container's name in `CNI_ARGS` (`K=V;K=V`): `K8S_POD_NAME`, else `NAME`.
pub fn cni_arg_name(args: &str) -> Option<String> {
    let pairs: Vec<(&str, &str)> = args
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    ["K8S_POD_NAME", "NAME"].iter().find_map(|k| {
        pairs
            .iter()
            .find(|(key, v)| key == k && !v.is_empty())
            .map(|(_, v)| v.to_string())
    })
}

/// Spec: non-empty, starts alphanumeric, then `[A-Za-z0-9_.-]`.
fn check_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok && id.len() <= 200 {
        Ok(())
    } else {
        Err(Error::Env(format!(
            "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit \
             and hold only letters, digits, '_', '.' and '-' (at most 200)"
        )))
    }
}

/// Spec: at most 15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn check_ifname(name: &str) -> Result<()> {
    let ok = name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(Error::Env(format!(
            "CNI_IFNAME {name:?} is invalid: at most 15 bytes, not . or .., \
             no '/', ':' or whitespace"
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Invocation> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Invocation::parse(|k| map.get(k).cloned(), true)
    }

    #[test]
    fn add_needs_all_three_and_names_the_missing_ones() {
        let err = parse(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "")]).unwrap_err();
        assert_eq!(err.code(), 4);
        let msg = err.to_string();
        for v in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
            assert!(msg.contains(v), "{msg}");
        }
        let ok = parse(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(ok.command, Command::Add);
    }

    #[test]
    fn del_does_not_need_a_netns_and_status_needs_nothing() {
        let del = parse(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ])
        .unwrap();
        assert_eq!(del.netns, None);
        assert!(parse(&[("CNI_COMMAND", "STATUS")]).is_ok());
        assert!(parse(&[("CNI_COMMAND", "GC")]).is_ok());
    }

    #[test]
    fn bad_values_are_code_4() {
        for vars in [
            vec![("CNI_COMMAND", "FROB")],
            vec![],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "-abc"),
                ("CNI_IFNAME", "eth0"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "eth0:1"),
            ],
            vec![
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "abc"),
                ("CNI_IFNAME", "a-name-longer-than-15"),
            ],
        ] {
            assert_eq!(parse(&vars).unwrap_err().code(), 4, "{vars:?}");
        }
    }

    #[test]
    fn the_container_name_comes_from_cni_args() {
        assert_eq!(
            super::cni_arg_name("IgnoreUnknown=1;K8S_POD_NAMESPACE=d;K8S_POD_NAME=web-0")
                .as_deref(),
            Some("web-0")
        );
        assert_eq!(
            super::cni_arg_name("NAME=db;K8S_POD_NAME=").as_deref(),
            Some("db")
        );
        assert_eq!(super::cni_arg_name("IgnoreUnknown=1"), None);
        assert_eq!(super::cni_arg_name(""), None);
    }
}
