// SPDX-License-Identifier: Apache-2.0
//! `GET /ps`: what is attached to this peer's network, for `weave ps`.
//!
//! IPAM knows which identifiers hold addresses, but not where they live.
//! So CNI ADD and `weave attach` leave the namespace and interface of each
//! attachment here ([`Attachments`], kept in the state directory so that it
//! outlives a restart of the agent), and `ps` reads the interface's MAC and
//! addresses inside that namespace: what the container really has, not
//! what we think it has. An attachment whose namespace is gone and that
//! holds no address any more is forgotten on the way.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tracing::warn;
use weave_api::net::IpNet;
use weave_api::{PsEntry, PsReply, BRIDGE_ID};
use weave_platform::Netlink;

use super::{error, host_netlink, ipam, Api, ApiError};
use crate::ipam::allocator::Request;
use crate::ipam::space::Allocation;
use crate::state::ATTACHMENTS_FILE as FILE;

/// Attachments remembered at most; more are served from IPAM alone.
pub(crate) const MAX_ATTACHMENTS: usize = 4096;

/// Where an attachment lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Place {
    netns: String,
    ifname: String,
}

/// Namespace and interface of each attachment, by IPAM identifier.
#[derive(Debug, Default)]
pub struct Attachments {
    file: Option<PathBuf>,
    places: Mutex<BTreeMap<String, Place>>,
}

impl Attachments {
    /// What `state_dir` remembers (nothing when it holds no file, or a
    /// file that does not parse: `ps` then shows IPAM's view).
    pub fn load(state_dir: Option<&Path>) -> Self {
        let file = state_dir.map(|d| d.join(FILE));
        let places = file
            .as_deref()
            .and_then(|f| match std::fs::read(f) {
                Ok(b) => serde_json::from_slice(&b)
                    .map_err(|e| warn!(file = %f.display(), error = %e, "attachments file ignored"))
                    .ok(),
                Err(_) => None,
            })
            .unwrap_or_default();
        Self {
            file,
            places: Mutex::new(places),
        }
    }

    /// Remembers where `id` lives.
    pub(crate) fn record(&self, id: &str, netns: &str, ifname: &str) {
        let place = Place {
            netns: netns.to_string(),
            ifname: ifname.to_string(),
        };
        let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        if places.get(id) == Some(&place) {
            return;
        }
        if places.len() >= MAX_ATTACHMENTS && !places.contains_key(id) {
            warn!(%id, max = MAX_ATTACHMENTS, "too many attachments to remember; weave ps shows this one from IPAM");
            return;
        }
        places.insert(id.to_string(), place);
        self.save(&places);
    }

    /// Forgets `ids`.
    pub(crate) fn forget<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut places = self.places.lock().unwrap_or_else(PoisonError::into_inner);
        let before = places.len();
        for id in ids {
            places.remove(id);
        }
        if places.len() != before {
            self.save(&places);
        }
    }

    fn snapshot(&self) -> BTreeMap<String, Place> {
        self.places
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Writes the file (atomically, without waiting for the disk: losing
    /// the last change to a power cut only costs `ps` a MAC).
    fn save(&self, places: &BTreeMap<String, Place>) {
        let Some(file) = &self.file else { return };
        let bytes = serde_json::to_vec(places).expect("a map of strings serializes");
        if let Err(e) = crate::atomic_file::replace(file, &bytes) {
            warn!(file = %file.display(), error = %e, "could not save attachments");
        }
    }
}

fn nets(addrs: &[(IpAddr, u8)]) -> Vec<IpNet> {
    addrs
        .iter()
        .filter_map(|(a, len)| IpNet::new(*a, *len).ok())
        .collect()
}

pub(crate) async fn ps(State(api): State<Api>) -> Result<Json<PsReply>, ApiError> {
    let held: BTreeMap<String, Vec<Allocation>> = match api.ipam {
        Some(_) => ipam::call(&api, ipam::DEFAULT_TIMEOUT, |reply| Request::List { reply })
            .await?
            .into_iter()
            .map(|(id, list)| (id.to_string(), list))
            .collect(),
        None => BTreeMap::new(),
    };
    let mut entries = Vec::new();
    if let Some(b) = &api.bridge {
        entries.push(bridge_entry(&b.name).await?);
    }
    let places = api.attachments.snapshot();
    let ids: BTreeSet<String> = held
        .keys()
        .filter(|id| !id.starts_with(BRIDGE_ID))
        .chain(places.keys())
        .cloned()
        .collect();
    // Reading inside namespaces blocks (a thread per namespace).
    let (found, gone) = tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let mut gone = Vec::new();
        for id in ids {
            let from_ipam: Vec<IpNet> = held
                .get(&id)
                .map(|l| l.iter().map(Allocation::net).collect())
                .unwrap_or_default();
            let place = places.get(&id);
            let view = place.and_then(|p| {
                weave_platform::interface_in(Path::new(&p.netns), &p.ifname)
                    .ok()
                    .flatten()
            });
            if place.is_some() && view.is_none() && from_ipam.is_empty() {
                gone.push(id);
                continue;
            }
            found.push(PsEntry {
                mac: view.as_ref().and_then(|v| v.mac.clone()),
                addresses: view.map_or(from_ipam, |v| nets(&v.addrs)),
                netns: place.map(|p| p.netns.clone()),
                ifname: place.map(|p| p.ifname.clone()),
                id,
            });
        }
        (found, gone)
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    api.attachments.forget(gone.iter().map(String::as_str));
    entries.extend(found);
    Ok(Json(PsReply { entries }))
}

/// The bridge's own line: its MAC and the addresses it holds.
async fn bridge_entry(name: &str) -> Result<PsEntry, ApiError> {
    let failed = |e: weave_platform::Error| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            weave_api::error_chain(&e),
        )
    };
    let host = host_netlink()?;
    let (mac, addrs) = match host.link_index(name).await.map_err(failed)? {
        Some(i) => (
            host.link_mac(i).await.map_err(failed)?,
            host.addrs(i).await.map_err(failed)?,
        ),
        None => (None, Vec::new()),
    };
    Ok(PsEntry {
        id: BRIDGE_ID.to_string(),
        mac: mac.map(weave_platform::fmt_mac),
        addresses: nets(&addrs),
        netns: None,
        ifname: Some(name.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attachments_survive_a_reload_and_are_bounded() {
        let dir = std::env::temp_dir().join(format!("weave-ps-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Attachments::load(Some(&dir));
        a.record("cni:weave:c1:eth0", "/run/netns/c1", "eth0");
        a.record("netns:/run/netns/c2", "/run/netns/c2", "ethwe0");
        a.forget(["netns:/run/netns/c2"]);
        let b = Attachments::load(Some(&dir));
        assert_eq!(
            b.snapshot().into_iter().collect::<Vec<_>>(),
            vec![(
                "cni:weave:c1:eth0".to_string(),
                Place {
                    netns: "/run/netns/c1".into(),
                    ifname: "eth0".into()
                }
            )]
        );
        let unsaved = Attachments::load(None);
        for i in 0..MAX_ATTACHMENTS + 10 {
            unsaved.record(&format!("id{i}"), "/run/netns/x", "eth0");
        }
        assert_eq!(unsaved.snapshot().len(), MAX_ATTACHMENTS);
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        assert!(Attachments::load(Some(&dir)).snapshot().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
