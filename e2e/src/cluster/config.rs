// SPDX-License-Identifier: Apache-2.0
//! The configuration files of a node's containerd, kubelet and kube-proxy, and the reference
//! CNI configuration: pure functions of the node's facts, so they can be read and tested
//! without a cluster.
//!
//! Paths in them are the node's own view: `/var/lib/kubelet`, `/run/containerd` and the CNI
//! directories are private to the node's mount namespace (see [`super::node_init`]), so every
//! node uses the standard paths. Files that live in the cluster directory are named by their
//! absolute path there, which every node sees too.
//!
//! Choices that keep the machine's own settings untouched: the kubelet runs with cgroupfs under
//! a cgroup root of its own and accepts the cgroup v1 layout (`failCgroupV1: false`);
//! kube-proxy leaves the global conntrack table size and timeouts alone (`maxPerCore: 0`,
//! zero timeouts); eviction and image garbage collection are off because every node shares one
//! disk.

use std::path::Path;

use serde_json::json;

/// The CRI socket inside every node.
pub(crate) const CRI_SOCKET: &str = "/run/containerd/containerd.sock";

/// Facts about one node that its configuration files need.
#[derive(Debug, Clone)]
pub(crate) struct NodeFacts<'a> {
    /// Kubernetes node name.
    pub(crate) name: &'a str,
    /// The node's cgroup root (`/wv1a2b3c-node-1`), created before the kubelet starts.
    pub(crate) cgroup_root: &'a str,
    /// Directory of the upstream programs (runc, the shim).
    pub(crate) tools_bin: &'a Path,
    /// Sandbox (pause) image reference.
    pub(crate) pause_image: &'a str,
    /// Cluster CA certificate.
    pub(crate) ca: &'a Path,
    /// The kubelet's resolv.conf.
    pub(crate) resolv_conf: &'a Path,
    /// kube-proxy's kubeconfig.
    pub(crate) proxy_kubeconfig: &'a Path,
    /// The pod network's range, for kube-proxy's notion of cluster traffic.
    pub(crate) cluster_cidr: &'a str,
}

/// containerd's configuration (version 3): standard paths inside the node, NRI off (two
/// instances cannot share its socket), cgroupfs, the pinned pause image, network namespaces
/// under the state directory (so they are private to the node), runc from the tools, and no
/// oom_score_adj below containerd's own (lowering it needs CAP_SYS_RESOURCE, which the test
/// machines' root does not have; kind's rootless mode does the same).
pub(crate) fn containerd(node: &NodeFacts<'_>) -> String {
    let runc = node.tools_bin.join("runc");
    format!(
        r#"version = 3
root = "/var/lib/containerd"
state = "/run/containerd"

[grpc]
  address = "{CRI_SOCKET}"

[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{pause}"

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true

[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = "runc"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{runc}"

[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/opt/cni/bin"]
  conf_dir = "/etc/cni/net.d"
"#,
        pause = node.pause_image,
        runc = runc.display(),
    )
}

/// The kubelet's configuration file (JSON, which the kubelet reads like YAML).
pub(crate) fn kubelet(node: &NodeFacts<'_>) -> String {
    let config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": false,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": node.cgroup_root,
        "containerRuntimeEndpoint": format!("unix://{CRI_SOCKET}"),
        "failSwapOn": false,
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": node.ca },
        },
        "authorization": { "mode": "Webhook" },
        "evictionHard": {
            "memory.available": "0%",
            "nodefs.available": "0%",
            "nodefs.inodesFree": "0%",
            "imagefs.available": "0%",
            "imagefs.inodesFree": "0%",
        },
        "imageGCHighThresholdPercent": 100,
        "localStorageCapacityIsolation": false,
        "resolvConf": node.resolv_conf,
        "clusterDomain": "cluster.local",
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "rotateCertificates": false,
        "serializeImagePulls": false,
    });
    format!("{config:#}\n")
}

/// kube-proxy's configuration: nftables mode, global conntrack settings left alone.
pub(crate) fn kube_proxy(node: &NodeFacts<'_>) -> String {
    let config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "clientConnection": { "kubeconfig": node.proxy_kubeconfig },
        "hostnameOverride": node.name,
        "clusterCIDR": node.cluster_cidr,
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
            "udpTimeout": "0s",
            "udpStreamTimeout": "0s",
        },
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "0.0.0.0:10256",
    });
    format!("{config:#}\n")
}

/// The reference CNI network of node `index` (1-based): a bridge `cni0` with the node's
/// own /24 of `10.32.0.0/16` from host-local, the node as gateway, masquerade for traffic
/// leaving the pod network, and portmap for hostPorts.
pub(crate) fn reference_conflist(index: usize) -> String {
    let config = json!({
        "cniVersion": "1.1.0",
        "name": "reference",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": reference_subnet(index) }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    });
    format!("{config:#}\n")
}

/// The pod subnet of node `index` (1-based) under the reference CNI.
pub(crate) fn reference_subnet(index: usize) -> String {
    format!("10.32.{index}.0/24")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts<'static> {
        NodeFacts {
            name: "node-1",
            cgroup_root: "/wv000001-node-1",
            tools_bin: Path::new("/cache/tools/bin"),
            pause_image: "registry.k8s.io/pause:3.10.2",
            ca: Path::new("/c/pki/ca.crt"),
            resolv_conf: Path::new("/c/nodes/node-1/resolv.conf"),
            proxy_kubeconfig: Path::new("/c/nodes/node-1/kube-proxy.kubeconfig"),
            cluster_cidr: "10.32.0.0/12",
        }
    }

    #[test]
    fn kubelet_config_accepts_cgroup_v1_under_its_own_root() {
        let config: serde_json::Value =
            serde_json::from_str(&kubelet(&facts())).expect("kubelet config is JSON");
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["cgroupRoot"], "/wv000001-node-1");
        assert_eq!(config["cgroupDriver"], "cgroupfs");
        assert_eq!(config["authentication"]["anonymous"]["enabled"], false);
        assert_eq!(
            config["containerRuntimeEndpoint"],
            "unix:///run/containerd/containerd.sock"
        );
    }

    #[test]
    fn kube_proxy_leaves_global_conntrack_alone() {
        let config: serde_json::Value =
            serde_json::from_str(&kube_proxy(&facts())).expect("kube-proxy config is JSON");
        assert_eq!(config["mode"], "nftables");
        assert_eq!(config["conntrack"]["maxPerCore"], 0);
        assert_eq!(config["conntrack"]["tcpEstablishedTimeout"], "0s");
        assert_eq!(config["hostnameOverride"], "node-1");
    }

    #[test]
    fn containerd_config_pins_pause_and_runc() {
        let text = containerd(&facts());
        assert!(
            text.contains(r#"sandbox = "registry.k8s.io/pause:3.10.2""#),
            "{text}"
        );
        assert!(
            text.contains(r#"BinaryName = "/cache/tools/bin/runc""#),
            "{text}"
        );
        assert!(
            text.contains("netns_mounts_under_state_dir = true"),
            "{text}"
        );
        assert!(text.contains("SystemdCgroup = false"), "{text}");
    }

    #[test]
    fn reference_network_gives_each_node_its_own_subnet() {
        let config: serde_json::Value =
            serde_json::from_str(&reference_conflist(2)).expect("conflist is JSON");
        assert_eq!(
            config["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.32.2.0/24"
        );
        assert_eq!(config["plugins"][1]["type"], "portmap");
    }
}
