// SPDX-License-Identifier: Apache-2.0
//! The nftables script of the services table: a pure function of the services, the pod range
//! and the bridge, replaced whole in one transaction.
//!
//! Per service, three rules:
//! - `prerouting` (packets arriving from elsewhere) and `output` (this host's own processes)
//!   DNAT the front to the target. An unbound export's front is any local address
//!   (`fib daddr type local`), except loopback in `output` (DNAT from 127/8 would need
//!   `route_localnet`); an import's front is its weave address, reached only from the bridge
//!   in `prerouting` so that the outside cannot use it as an open relay.
//! - `postrouting` masquerades the DNAT'ed connections of that service alone (matched on
//!   the connection's original destination), so the target answers through this host: an
//!   export's target sees this host's bridge address, an import's target the address of the
//!   interface that reaches it.

use std::fmt::Write as _;

use weave_api::{Service, ServiceKind};

/// Our table (family `ip`), beside egress's `ip weave`.
pub const TABLE: &str = "weave-services";

/// The script that makes the table exactly `services`; with none, it deletes the table.
pub fn ruleset(bridge: &str, services: &[Service]) -> String {
    let mut out = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n");
    if services.is_empty() {
        return out;
    }
    let (mut pre, mut output, mut post) = (String::new(), String::new(), String::new());
    for s in services {
        let l4 = format!("meta l4proto {}", s.proto);
        let dnat = format!("dnat to {}", s.target);
        let comment = format!("comment \"{}\"", super::set::describe(s));
        let (front_pre, front_out) = match (s.kind, s.address) {
            (ServiceKind::Export, None) => (
                "fib daddr type local".to_string(),
                "ip daddr != 127.0.0.0/8 fib daddr type local".to_string(),
            ),
            (ServiceKind::Export, Some(a)) => (format!("ip daddr {a}"), format!("ip daddr {a}")),
            (ServiceKind::Import, a) => {
                let a = a.map(|a| a.to_string()).unwrap_or_default();
                (
                    format!("iifname \"{bridge}\" ip daddr {a}"),
                    format!("ip daddr {a}"),
                )
            }
        };
        let port = format!("th dport {}", s.port);
        let _ = writeln!(pre, "\t\t{front_pre} {l4} {port} {dnat} {comment}");
        let _ = writeln!(output, "\t\t{front_out} {l4} {port} {dnat} {comment}");
        let original = match s.address {
            Some(a) => format!("ct original ip daddr {a} "),
            None => String::new(),
        };
        let out_if = match s.kind {
            ServiceKind::Export => format!("oifname \"{bridge}\" "),
            ServiceKind::Import => String::new(),
        };
        let _ = writeln!(
            post,
            "\t\tct status dnat {original}{l4} ct original proto-dst {} ip daddr {} th dport {} {out_if}masquerade {comment}",
            s.port,
            s.target.ip(),
            s.target.port()
        );
    }
    let _ = write!(
        out,
        "table ip {TABLE} {{\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n{pre}\t}}\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n{output}\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n{post}\t}}\n\
         }}\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weave_api::ServiceProto;

    /// Compares `got` with the golden file `name`, or rewrites it under `UPDATE_GOLDEN=1`.
    fn golden(name: &str, got: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/services")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&path, got).expect("write golden");
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        assert_eq!(
            got,
            want,
            "{} differs (UPDATE_GOLDEN=1 rewrites it)",
            path.display()
        );
    }

    fn service(kind: ServiceKind, address: Option<&str>, port: u16, target: &str) -> Service {
        Service {
            kind,
            proto: ServiceProto::Tcp,
            address: address.map(|a| a.parse().expect("address")),
            port,
            target: target.parse().expect("target"),
        }
    }

    #[test]
    fn no_services_delete_the_table() {
        let got = ruleset("weave", &[]);
        assert_eq!(
            got,
            "table ip weave-services {}\ndelete table ip weave-services\n"
        );
    }

    /// The seeds' scenarios: an export of a container's port 4422 on every address of the
    /// host at 2211, the same bound to one address, an import of an outside 2211 at the
    /// host's weave address 10.32.0.1:3322, and a UDP import.
    #[test]
    fn exports_and_imports() {
        let mut udp = service(ServiceKind::Import, Some("10.32.0.1"), 53, "192.168.7.1:53");
        udp.proto = ServiceProto::Udp;
        let services = [
            service(ServiceKind::Export, None, 2211, "10.32.0.5:4422"),
            service(
                ServiceKind::Export,
                Some("192.168.1.2"),
                8080,
                "10.32.0.6:80",
            ),
            service(
                ServiceKind::Import,
                Some("10.32.0.1"),
                3322,
                "192.168.5.3:2211",
            ),
            udp,
        ];
        golden("exports_and_imports.nft", &ruleset("weave", &services));
    }
}
