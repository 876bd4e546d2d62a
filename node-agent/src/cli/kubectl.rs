// SPDX-License-Identifier: Apache-2.0
//! `kubectl weave`: the whole cluster's weave status without `kubectl exec`.
//!
//! The plugin uses the user's kubeconfig and RBAC: it lists weave's pods and reads each
//! node's agent (`GET /report` on its metrics port) and weave-npc (`GET /metrics`) through the
//! API server's pod proxy (`pods/proxy`, verb get). Both endpoints are read-only. A user who
//! may not proxy to pods in weave's namespace gets one line saying which permission is
//! missing.
//!
//! What it shows: per node, the local peer, its established connections (mode, MTU) out of
//! the other nodes, its share of the address range and what it uses; whether every node
//! sees the same owners of the range (they should, once gossip settled); NetworkPolicy drops
//! per pod. `-o json` prints the same as one JSON document.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde::Serialize;
use weave_api::{ConnectionState, Report};

use super::weave::table;

/// Label of weave's pods.
const SELECTOR: &str = "app.kubernetes.io/name=weave";

/// kubectl weave: status of weave on every node, through the API server.
#[derive(Debug, Parser)]
#[command(name = "kubectl-weave", version, about)]
pub struct Cli {
    /// Namespace weave runs in.
    #[arg(long, short = 'n', global = true, default_value = "kube-system")]
    pub namespace: String,
    /// The agents' metrics port (serves the read-only report).
    #[arg(long, global = true, default_value_t = 6782)]
    pub agent_port: u16,
    /// weave-npc's metrics port.
    #[arg(long, global = true, default_value_t = 6781)]
    pub npc_port: u16,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "text")]
    pub output: Output,
    /// The kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Act as this user or ServiceAccount (`system:serviceaccount:NS:NAME`), as `kubectl --as`.
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Summary of every node; or its connections, IP allocation or policy drops.
    Status {
        /// What to show.
        #[arg(value_enum)]
        what: Option<What>,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
    },
}

/// Parts of `kubectl weave status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum What {
    /// Each node's connections to the others.
    Connections,
    /// Each node's share of the range and the owners it sees.
    Ipam,
    /// NetworkPolicy drops per pod.
    Policy,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Text,
    /// One JSON document.
    Json,
}

/// One node as the plugin sees it.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    /// Node name.
    pub node: String,
    /// weave's pod on it.
    pub pod: String,
    /// The agent's report, or why it could not be read (`{"error": …}` in JSON).
    #[serde(serialize_with = "answer")]
    pub report: Result<Report, String>,
    /// Policy drops on this node (namespace/pod, direction, packets), or why not read.
    #[serde(serialize_with = "answer")]
    pub drops: Result<Vec<PolicyDrop>, String>,
}

/// A value read from a node as itself, or `{"error": "why not"}`.
fn answer<T: Serialize, S: serde::Serializer>(
    value: &Result<T, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match value {
        Ok(v) => v.serialize(s),
        Err(e) => {
            let mut map = s.serialize_map(Some(1))?;
            map.serialize_entry("error", e)?;
            map.end()
        }
    }
}

/// Packets dropped by NetworkPolicy for one pod and direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDrop {
    /// `namespace/pod`.
    pub pod: String,
    /// `ingress` or `egress`.
    pub direction: String,
    /// Packets dropped.
    pub packets: u64,
}

/// The cluster's status.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// Every node running weave.
    pub nodes: Vec<NodeStatus>,
    /// Whether every node that answered sees the same owners of the range.
    pub ipam_agrees: bool,
}

/// Runs the plugin, writing to `out`.
pub async fn run(cli: Cli, out: &mut impl Write) -> anyhow::Result<()> {
    let mut config = match &cli.context {
        Some(context) => {
            let options = kube::config::KubeConfigOptions {
                context: Some(context.clone()),
                ..Default::default()
            };
            kube::Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("cannot use context {context:?} of your kubeconfig"))?
        }
        None => kube::Config::infer()
            .await
            .context("cannot use your kubeconfig")?,
    };
    if let Some(user) = &cli.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    let client = kube::Client::try_from(config).context("cannot use your kubeconfig")?;
    let Command::Status { what, node } = cli.command;
    let status = collect(
        &client,
        &cli.namespace,
        cli.agent_port,
        cli.npc_port,
        node.as_deref(),
    )
    .await?;
    match cli.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut *out, &status)?;
            writeln!(out)?;
        }
        Output::Text => out.write_all(render(&status, what).as_bytes())?,
    }
    Ok(())
}

/// Reads every weave pod's agent and weave-npc through the API server.
pub async fn collect(
    client: &kube::Client,
    namespace: &str,
    agent_port: u16,
    npc_port: u16,
    only: Option<&str>,
) -> anyhow::Result<ClusterStatus> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(SELECTOR))
        .await
        .map_err(|e| explain(e, &format!("list weave's pods in {namespace}")))?;
    let mut nodes = Vec::new();
    for pod in list.items {
        let (Some(name), Some(node)) = (
            pod.metadata.name.clone(),
            pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        ) else {
            continue;
        };
        if only.is_some_and(|o| o != node) {
            continue;
        }
        let report = proxy(client, namespace, &name, agent_port, "report")
            .await
            .and_then(|text| {
                serde_json::from_str::<Report>(&text)
                    .map_err(|e| anyhow::anyhow!("the agent's report: {e}"))
            });
        if let Err(e) = &report {
            if is_forbidden(e) {
                bail!("{e:#}");
            }
        }
        let drops = proxy(client, namespace, &name, npc_port, "metrics")
            .await
            .map(|text| policy_drops(&text));
        nodes.push(NodeStatus {
            node,
            pod: name,
            report: report.map_err(|e| format!("{e:#}")),
            drops: drops.map_err(|e| format!("{e:#}")),
        });
    }
    if let Some(node) = only.filter(|_| nodes.is_empty()) {
        bail!("no weave pod runs on node {node:?}");
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let ipam_agrees = ipam_views_agree(&nodes);
    Ok(ClusterStatus { nodes, ipam_agrees })
}

/// `GET /path` on `pod:port` through the API server's pod proxy.
async fn proxy(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> anyhow::Result<String> {
    let uri = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{path}");
    let request = http::Request::get(&uri).body(Vec::new())?;
    client
        .request_text(request)
        .await
        .map_err(|e| explain(e, &format!("read {path} of {pod} through the API server")))
}

/// An API error as one line, naming the missing permission on 403.
fn explain(err: kube::Error, what: &str) -> anyhow::Error {
    match &err {
        kube::Error::Api(e) if e.code == 403 => anyhow::anyhow!(
            "{what}: forbidden: kubectl weave needs list on pods and get on pods/proxy in weave's namespace ({})",
            e.message
        ),
        _ => anyhow::Error::new(err).context(what.to_owned()),
    }
}

/// Whether an error is a refusal by RBAC (the same for every node: stop at the first).
fn is_forbidden(err: &anyhow::Error) -> bool {
    format!("{err:#}").contains("forbidden: kubectl weave needs")
}

/// The per-pod drop counters of weave-npc's metrics text.
pub fn policy_drops(metrics: &str) -> Vec<PolicyDrop> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("weavenpc_blocked_packets_total{")?;
            let (labels, value) = rest.split_once("} ")?;
            let label = |key: &str| {
                labels.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k == key).then(|| v.trim_matches('"').to_owned())
                })
            };
            Some(PolicyDrop {
                pod: format!("{}/{}", label("namespace")?, label("pod")?),
                direction: label("direction")?,
                packets: value.trim().parse().ok()?,
            })
        })
        .collect()
}

/// Whether every node that answered reports the same owners and shares of the range.
fn ipam_views_agree(nodes: &[NodeStatus]) -> bool {
    let views: Vec<Vec<(String, u64)>> = nodes
        .iter()
        .filter_map(|n| n.report.as_ref().ok()?.ipam.as_ref())
        .map(|ipam| {
            let mut owners: Vec<(String, u64)> = ipam
                .owners
                .iter()
                .filter(|o| o.addresses > 0)
                .map(|o| (o.name.clone(), o.addresses))
                .collect();
            owners.sort();
            owners
        })
        .collect();
    views.windows(2).all(|w| w[0] == w[1])
}

/// The text output.
pub fn render(status: &ClusterStatus, what: Option<What>) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut tail = String::new();
    match what {
        None => {
            rows.push(
                [
                    "NODE",
                    "PEER",
                    "CONNECTIONS",
                    "MTU",
                    "IPAM SHARE",
                    "IPAM USED",
                    "POLICY DROPS",
                ]
                .map(String::from)
                .to_vec(),
            );
            let expected = status.nodes.len().saturating_sub(1);
            for n in &status.nodes {
                let drops = match &n.drops {
                    Ok(d) => d.iter().map(|d| d.packets).sum::<u64>().to_string(),
                    Err(_) => "?".into(),
                };
                match &n.report {
                    Ok(r) => {
                        let established = r
                            .connections
                            .iter()
                            .filter(|c| c.state == ConnectionState::Established)
                            .count();
                        let modes = modes(r);
                        let (share, used) = share(r);
                        rows.push(vec![
                            n.node.clone(),
                            r.peer.name.clone(),
                            format!("{established}/{expected} established{modes}"),
                            r.sleeve.as_ref().map_or("-".into(), |s| s.mtu.to_string()),
                            share,
                            used,
                            drops,
                        ]);
                    }
                    Err(e) => rows.push(vec![
                        n.node.clone(),
                        format!("unreachable: {e}"),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        drops,
                    ]),
                }
            }
            tail = if status.ipam_agrees {
                "IP allocation: every node sees the same owners\n".into()
            } else {
                "IP allocation: nodes DISAGREE on the owners (see `kubectl weave status ipam`)\n"
                    .into()
            };
        }
        Some(What::Connections) => {
            rows.push(
                [
                    "NODE",
                    "PEER",
                    "ADDRESS",
                    "STATE",
                    "MODE",
                    "MTU",
                    "ENCRYPTED",
                    "INFO",
                ]
                .map(String::from)
                .to_vec(),
            );
            for n in &status.nodes {
                let Ok(r) = &n.report else { continue };
                for c in &r.connections {
                    rows.push(vec![
                        n.node.clone(),
                        c.nickname
                            .clone()
                            .or_else(|| c.peer.clone())
                            .unwrap_or_default(),
                        c.address.clone(),
                        format!("{:?}", c.state).to_lowercase(),
                        c.mode.clone().unwrap_or_else(|| "-".into()),
                        c.mtu.map_or("-".into(), |m| m.to_string()),
                        if c.encrypted { "yes" } else { "no" }.into(),
                        c.info.clone(),
                    ]);
                }
            }
        }
        Some(What::Ipam) => {
            rows.push(
                ["NODE (VIEW)", "OWNER", "ADDRESSES", "SHARE"]
                    .map(String::from)
                    .to_vec(),
            );
            for n in &status.nodes {
                let Some(ipam) = n.report.as_ref().ok().and_then(|r| r.ipam.as_ref()) else {
                    continue;
                };
                for o in ipam.owners.iter().filter(|o| o.addresses > 0) {
                    let label = if o.nickname.is_empty() {
                        o.name.clone()
                    } else {
                        format!("{}({})", o.name, o.nickname)
                    };
                    rows.push(vec![
                        n.node.clone(),
                        label,
                        o.addresses.to_string(),
                        percent(o.addresses, ipam.total),
                    ]);
                }
            }
            tail = format!(
                "views {}\n",
                if status.ipam_agrees {
                    "agree"
                } else {
                    "DISAGREE"
                }
            );
        }
        Some(What::Policy) => {
            rows.push(
                ["NODE", "POD", "DIRECTION", "DROPPED PACKETS"]
                    .map(String::from)
                    .to_vec(),
            );
            for n in &status.nodes {
                match &n.drops {
                    Ok(drops) => rows.extend(drops.iter().map(|d| {
                        vec![
                            n.node.clone(),
                            d.pod.clone(),
                            d.direction.clone(),
                            d.packets.to_string(),
                        ]
                    })),
                    Err(e) => rows.push(vec![
                        n.node.clone(),
                        format!("weave-npc unreachable: {e}"),
                        String::new(),
                        String::new(),
                    ]),
                }
            }
        }
    }
    table(&rows) + &tail
}

/// ` (sleeve)`, ` (fastdp 2, sleeve 1)`: the modes of established connections.
fn modes(r: &Report) -> String {
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for c in r
        .connections
        .iter()
        .filter(|c| c.state == ConnectionState::Established)
    {
        *count
            .entry(c.mode.as_deref().unwrap_or("control only"))
            .or_default() += 1;
    }
    match count.len() {
        0 => String::new(),
        1 => format!(" ({})", count.keys().next().copied().unwrap_or_default()),
        _ => format!(
            " ({})",
            count
                .iter()
                .map(|(m, n)| format!("{m} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// This node's share of the range and its use.
fn share(r: &Report) -> (String, String) {
    let Some(ipam) = &r.ipam else {
        return ("off".into(), "-".into());
    };
    let mine = ipam
        .owners
        .iter()
        .find(|o| o.name == r.peer.name)
        .map_or(0, |o| o.addresses);
    (percent(mine, ipam.total), ipam.used.to_string())
}

/// `part` of `total` as a percentage with one decimal.
fn percent(part: u64, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    #[allow(clippy::cast_precision_loss)]
    let p = part as f64 * 100.0 / total as f64;
    format!("{p:.1}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_come_from_npc_metrics() {
        let text = "# HELP weavenpc_blocked_packets_total x\n\
                    weavenpc_blocked_packets_total{namespace=\"np\",pod=\"server\",direction=\"ingress\"} 12\n\
                    weavenpc_rules 7\n";
        assert_eq!(
            policy_drops(text),
            [PolicyDrop {
                pod: "np/server".into(),
                direction: "ingress".into(),
                packets: 12
            }]
        );
    }

    #[test]
    fn percentages_have_one_decimal() {
        assert_eq!(percent(1, 4), "25.0%");
        assert_eq!(percent(1, 0), "-");
    }

    #[test]
    fn unreachable_nodes_are_shown_not_fatal() {
        let status = ClusterStatus {
            nodes: vec![NodeStatus {
                node: "node-1".into(),
                pod: "weave-net-x".into(),
                report: Err("connection refused".into()),
                drops: Err("connection refused".into()),
            }],
            ipam_agrees: true,
        };
        let text = render(&status, None);
        assert!(
            text.contains("node-1  unreachable: connection refused"),
            "{text}"
        );
        let json = serde_json::to_value(&status).expect("serialises");
        assert_eq!(json["nodes"][0]["report"]["error"], "connection refused");
    }
}
