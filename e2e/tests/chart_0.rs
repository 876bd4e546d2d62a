// SPDX-License-Identifier: Apache-2.0
//! The Helm chart and the manifests, without a cluster: `helm lint --strict` passes with the
//! default and with non-default values; `manifests/weave-daemonset.yaml` is exactly the chart
//! rendered with its defaults (one source of truth; `make manifests` rewrites it); the values
//! schema refuses bad values; every rendered object, the uninstall manifest included, passes
//! `kubernetes-validate --strict` for Kubernetes 1.30 to 1.37; the chart, the manifests and
//! the image builder name one image version.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use weave_e2e::cluster::images::WEAVE_IMAGE;
use weave_e2e::cluster::Tools;
use weave_e2e::kube;

/// Non-default values exercising every template branch.
const CUSTOM: &[&str] = &[
    "--set",
    "ipam.range=10.100.0.0/16",
    "--set",
    "ipam.defaultSubnet=10.100.1.0/24",
    "--set",
    "mtu=1400",
    "--set",
    "password.secretName=weave-passwd",
    "--set",
    "networkPolicy.enabled=false",
    "--set",
    "logFormat=json",
    "--set",
    "extraEnv[0].name=WEAVE_CONN_LIMIT",
    "--set-string",
    "extraEnv[0].value=50",
];

#[test]
fn chart_0() -> Result<()> {
    let tools = Tools::locate()?;
    let helm = |args: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new(tools.bin("helm")).args(args).output()?)
    };
    let chart = kube::chart().display().to_string();

    for values in [&[][..], CUSTOM] {
        let mut args = vec!["lint", "--strict", &chart];
        args.extend_from_slice(values);
        let out = helm(&args)?;
        ensure!(
            out.status.success(),
            "helm lint {values:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let rendered = helm(&["template", "weave", &chart, "--namespace", "kube-system"])?;
    ensure!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let shipped = std::fs::read(kube::manifest())?;
    ensure!(
        rendered.stdout == shipped,
        "manifests/weave-daemonset.yaml differs from the chart rendered with its defaults; run `make manifests`"
    );

    // The ClusterNetworkPolicy CRD: off by default, and when on, the one shipped for kubectl.
    ensure!(
        !String::from_utf8_lossy(&rendered.stdout).contains("CustomResourceDefinition"),
        "the CRD is rendered by default"
    );
    let crd = helm(&[
        "template",
        "weave",
        &chart,
        "--namespace",
        "kube-system",
        "--set",
        "networkPolicy.installClusterNetworkPolicyCRD=true",
        "--show-only",
        "templates/clusternetworkpolicy-crd.yaml",
    ])?;
    let shipped_crd = std::fs::read_to_string(kube::cluster_policy_crd())?;
    ensure!(
        String::from_utf8_lossy(&crd.stdout).contains(shipped_crd.trim()),
        "the chart's CRD differs from manifests/clusternetworkpolicy-crd.yaml"
    );

    for bad in [
        "networkPolicy.logRate=0",
        "image.tag=latest",
        "ipam.range=ten.dot",
        "logFormat=xml",
        "mtu=100",
        "password.secretName=Bad_Name",
    ] {
        let out = helm(&["template", "weave", &chart, "--set", bad])?;
        ensure!(!out.status.success(), "the schema accepted {bad}");
    }

    let dir = std::env::temp_dir().join(format!("weave-chart-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let custom = dir.join("custom.yaml");
    let mut args = vec!["template", "weave", &chart, "--namespace", "weave"];
    args.extend_from_slice(CUSTOM);
    let out = helm(&args)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&custom, &out.stdout)?;
    let files = [
        kube::manifest(),
        kube::uninstall_manifest(),
        kube::cluster_policy_crd(),
        custom.clone(),
    ];
    for minor in 30..=37 {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", &format!("1.{minor}.0")])
            .args(&files)
            .output()
            .context("run kubernetes-validate (make deps installs it from PyPI)")?;
        ensure!(
            out.status.success(),
            "kubernetes-validate 1.{minor}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let custom_text = std::fs::read_to_string(&custom)?;
    ensure!(
        !custom_text.contains("name: weave-npc"),
        "npc disabled but rendered"
    );
    ensure!(
        custom_text.contains("/etc/weave/password/weave-passwd"),
        "password file not wired"
    );
    std::fs::remove_dir_all(&dir)?;

    let chart_yaml = std::fs::read_to_string(kube::chart().join("Chart.yaml"))?;
    let app_version = format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"));
    ensure!(
        chart_yaml.contains(&app_version),
        "Chart.yaml's appVersion is not the workspace version"
    );
    for manifest in [kube::manifest(), kube::uninstall_manifest()] {
        let text = std::fs::read_to_string(&manifest)?;
        let images: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .collect();
        ensure!(
            !images.is_empty() && images.iter().all(|i| *i == WEAVE_IMAGE),
            "{}: {images:?}",
            manifest.display()
        );
    }
    Ok(())
}
