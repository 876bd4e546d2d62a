// SPDX-License-Identifier: Apache-2.0
//! The local HTTP API, served on TCP (default 127.0.0.1:6784) and on a Unix
//! socket (default `/run/weave/weave.sock`, mode 0600).
//!
//! Handlers only translate between JSON and router [`ApiCommand`]s, IPAM
//! requests (the `ipam` submodule) and, for the CNI plugin's one request
//! per ADD, the API's own state (the `cni` submodule). Bodies are parsed
//! here rather than by axum's extractor so that every bad request gets the
//! same answer shape, `{"error": "..."}` with a 4xx status, and changes
//! nothing.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use weave_api::{
    AttachReply, AttachRequest, ConnectRequest, DetachRequest, ErrorReply, ForgetRequest,
    TargetsReply, VersionReply,
};

mod cni;
mod dns;
mod expose;
mod health;
mod ipam;
mod names;
mod ps;
mod services;

pub use ps::Attachments;

use crate::attach::{self, AttachError};
use crate::ipam::allocator::Request as IpamRequest;
use crate::ipam::space::Ident;
use crate::ipam::subnet::Subnet;
use crate::mesh::PeerName;
use ipam::AddrSpec;

use crate::config::parse_peer_addr;
use crate::router::ApiCommand;
use crate::{Error, Result};

/// Shared state of the handlers.
#[derive(Clone)]
struct Api {
    commands: mpsc::Sender<ApiCommand>,
    ipam: Option<mpsc::Sender<IpamRequest>>,
    port: u16,
    bridge: Option<BridgeInfo>,
    peer: PeerName,
    default_subnet: Option<Subnet>,
    gateways: Arc<cni::Gateways>,
    dns: Option<crate::dns::DnsHandle>,
    services: Option<ServicesInfo>,
    attachments: Arc<Attachments>,
}

/// What the API serves besides the router.
#[derive(Debug, Clone)]
pub struct Services {
    /// The local peer's name.
    pub peer: PeerName,
    /// The data plane, if there is one.
    pub bridge: Option<BridgeInfo>,
    /// The IPAM allocator, if IPAM runs.
    pub ipam: Option<mpsc::Sender<IpamRequest>>,
    /// The subnet allocations go to when they name none, if IPAM runs.
    pub default_subnet: Option<Subnet>,
    /// weaveDNS, if it runs.
    pub dns: Option<crate::dns::DnsHandle>,
    /// Exported and imported services, if they run (bridge and IPAM).
    pub services: Option<ServicesInfo>,
    /// Where attachments live, for `weave ps`.
    pub attachments: Arc<Attachments>,
}

/// How the API reaches the services task.
#[derive(Debug, Clone)]
pub struct ServicesInfo {
    /// Its requests.
    pub requests: mpsc::Sender<crate::services::Request>,
    /// The pod range.
    pub range: Subnet,
}

impl Services {
    /// The state the handlers share.
    fn api(self, commands: mpsc::Sender<ApiCommand>, port: u16) -> Api {
        Api {
            commands,
            ipam: self.ipam,
            port,
            bridge: self.bridge,
            peer: self.peer,
            default_subnet: self.default_subnet,
            gateways: Arc::default(),
            dns: self.dns,
            services: self.services,
            attachments: self.attachments,
        }
    }
}

/// What attach needs to know of the data plane.
#[derive(Debug, Clone)]
pub struct BridgeInfo {
    /// Bridge name.
    pub name: String,
    /// Overlay MTU.
    pub mtu: u32,
}

/// The API's routes.
fn routes(commands: mpsc::Sender<ApiCommand>, port: u16, services: Services) -> axum::Router {
    axum::Router::new()
        .route("/report", get(report))
        .route("/ipam", get(ipam::report))
        .route("/ipam/allocations", get(ipam::allocations))
        .route("/ipam/allocate", post(ipam::allocate))
        .route("/ipam/claim", post(ipam::claim))
        .route("/ipam/release", post(ipam::release))
        .route("/ipam/lookup", post(ipam::lookup))
        .route("/ipam/gc", post(ipam::gc))
        .route("/ipam/rmpeer", post(ipam::rmpeer))
        .route("/cni/add", post(cni::add))
        .route("/dns", get(dns::report))
        .route("/dns/entries", get(dns::entries))
        .route("/dns/add", post(dns::add))
        .route("/dns/remove", post(dns::remove))
        .route("/dns/lookup", post(dns::lookup))
        .route("/expose", post(expose::expose))
        .route("/hide", post(expose::hide))
        .route("/services", get(services::list))
        .route("/services/export", post(services::export))
        .route("/services/import", post(services::import))
        .route("/services/rebind", post(services::rebind))
        .route("/services/remove", post(services::remove))
        .route("/ps", get(ps::ps))
        .route("/version", get(version))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/connect", post(connect))
        .route("/forget", post(forget))
        .route("/attach", post(attach_netns))
        .route("/detach", post(detach_netns))
        .fallback(not_found)
        .with_state(services.api(commands, port))
}

/// Serves `GET /metrics` (Prometheus text) on `listener` until `cancel` fires.
pub async fn serve_metrics(
    listener: TcpListener,
    commands: mpsc::Sender<ApiCommand>,
    services: Services,
    cancel: CancellationToken,
) -> Result<()> {
    // Read-only: the report lets `kubectl weave` see every node through the API server's
    // pod proxy without reaching the local API.
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/report", get(report))
        .fallback(not_found)
        .with_state(services.api(commands, 0));
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
        .map_err(|source| Error::Serve {
            what: "metrics",
            source,
        })
}

async fn metrics(State(api): State<Api>) -> Result<Response, ApiError> {
    let mut report = ask(&api, ApiCommand::Report).await?;
    report.ipam = ipam::status(&api).await;
    report.dns = names::status(&api, false).await;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&report),
    )
        .into_response())
}

/// Serves the API on `http` and `socket` until `cancel` fires.
pub async fn serve(
    http: Option<TcpListener>,
    socket: Option<(UnixListener, std::path::PathBuf)>,
    commands: mpsc::Sender<ApiCommand>,
    port: u16,
    services: Services,
    cancel: CancellationToken,
) -> Result<()> {
    let app = routes(commands, port, services);
    let tcp = {
        let app = app.clone();
        let cancel = cancel.clone();
        async move {
            match http {
                Some(l) => axum::serve(l, app)
                    .with_graceful_shutdown(cancel.cancelled_owned())
                    .await
                    .map_err(|source| Error::Serve {
                        what: "HTTP API",
                        source,
                    }),
                None => Ok(()),
            }
        }
    };
    let unix = {
        let cancel = cancel.clone();
        async move {
            match socket {
                Some((l, path)) => {
                    let res = axum::serve(l, app)
                        .with_graceful_shutdown(cancel.cancelled_owned())
                        .await
                        .map_err(|source| Error::Serve {
                            what: "API socket",
                            source,
                        });
                    let _ = std::fs::remove_file(&path);
                    res
                }
                None => Ok(()),
            }
        }
    };
    let (a, b) = tokio::join!(tcp, unix);
    a.and(b)
}

/// Binds the API Unix socket at `path` with mode 0600. A stale socket file
/// (nobody listening) is replaced; a live one means another agent runs, and
/// is an error.
pub fn bind_socket(path: &Path) -> Result<UnixListener> {
    let fail = |reason: String| Error::ApiSocket {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("create directory: {e}")))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail("another agent is listening on it".into()));
            }
            std::fs::remove_file(path).map_err(|e| fail(format!("remove stale socket: {e}")))?;
        }
        Ok(_) => return Err(fail("exists and is not a socket".into())),
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|e| fail(format!("bind: {e}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| fail(format!("chmod 0600: {e}")))?;
    info!(path = %path.display(), "API listening on Unix socket");
    Ok(listener)
}

/// A refused request: status and message, sent as `{"error": ...}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        warn!(status = self.0.as_u16(), error = %self.1, "API request refused");
        (self.0, Json(ErrorReply { error: self.1 })).into_response()
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into())
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {e}"),
        )
    })
}

fn parse_addrs(peers: &[String], port: u16) -> Result<Vec<SocketAddr>, ApiError> {
    if peers.is_empty() {
        return Err(error(StatusCode::BAD_REQUEST, "no peers given"));
    }
    peers
        .iter()
        .map(|p| parse_peer_addr(p, port).map_err(|e| error(StatusCode::BAD_REQUEST, e)))
        .collect()
}

async fn ask<T>(
    api: &Api,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiCommand,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || error(StatusCode::SERVICE_UNAVAILABLE, "router is shutting down");
    api.commands
        .send(make(tx))
        .await
        .map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())
}

fn targets_reply(targets: Vec<SocketAddr>) -> Response {
    Json(TargetsReply {
        targets: targets.iter().map(ToString::to_string).collect(),
    })
    .into_response()
}

async fn report(State(api): State<Api>) -> Result<Json<weave_api::Report>, ApiError> {
    let mut report = ask(&api, ApiCommand::Report).await?;
    report.ipam = ipam::status(&api).await;
    report.dns = names::status(&api, false).await;
    Ok(Json(report))
}

async fn version() -> Json<VersionReply> {
    Json(VersionReply {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: format!(
            "{}..{}",
            crate::mesh::wire::MIN_VERSION,
            crate::mesh::wire::MAX_VERSION
        ),
    })
}

async fn connect(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let req: ConnectRequest = parse(&body)?;
    let addrs = parse_addrs(&req.peers, api.port)?;
    let targets = ask(&api, |reply| ApiCommand::Connect {
        addrs,
        replace: req.replace,
        reply,
    })
    .await?;
    Ok(targets_reply(targets))
}

async fn forget(State(api): State<Api>, body: Bytes) -> Result<Response, ApiError> {
    let req: ForgetRequest = parse(&body)?;
    let addrs = parse_addrs(&req.peers, api.port)?;
    let targets = ask(&api, |reply| ApiCommand::Forget { addrs, reply }).await?;
    Ok(targets_reply(targets))
}

fn attach_error(e: AttachError) -> ApiError {
    match e {
        AttachError::NoNetns(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
        AttachError::NoBridge(_) => error(StatusCode::CONFLICT, e.to_string()),
        AttachError::Platform(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            weave_api::error_chain(&e),
        ),
    }
}

fn bridge(api: &Api) -> Result<&BridgeInfo, ApiError> {
    api.bridge.as_ref().ok_or_else(|| {
        error(
            StatusCode::CONFLICT,
            "weaver runs without a bridge (--bridge off)",
        )
    })
}

fn host_netlink() -> Result<weave_platform::LinuxNetlink, ApiError> {
    weave_platform::LinuxNetlink::new().map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            weave_api::error_chain(&e),
        )
    })
}

/// The IPAM identifier of an attach: given, or derived from the namespace.
fn attach_ident(id: Option<&str>, netns: &str) -> Result<Ident, ApiError> {
    let derived = format!("netns:{netns}");
    Ident::new(id.unwrap_or(&derived)).map_err(|e| error(StatusCode::BAD_REQUEST, e))
}

async fn attach_netns(State(api): State<Api>, body: Bytes) -> Result<Json<AttachReply>, ApiError> {
    let req: AttachRequest = parse(&body)?;
    let mut specs = req
        .cidrs
        .iter()
        .map(|c| AddrSpec::parse(c).map_err(|e| error(StatusCode::BAD_REQUEST, e)))
        .collect::<Result<Vec<_>, _>>()?;
    if specs.is_empty() {
        specs.push(AddrSpec::Allocate(None));
    }
    let id = attach_ident(req.id.as_deref(), &req.netns)?;
    let dns_name = req
        .dns_name
        .as_deref()
        .map(|n| names::qualify(&api, n))
        .transpose()?;
    let dns_holder = dns_name
        .as_ref()
        .map(|_| {
            crate::dns::zone::Holder::new(id.as_str())
                .map_err(|e| error(StatusCode::BAD_REQUEST, e))
        })
        .transpose()?;
    let b = bridge(&api)?.clone();
    let netns = std::path::PathBuf::from(&req.netns);
    if !netns.exists() {
        return Err(attach_error(AttachError::NoNetns(req.netns)));
    }
    // What the id held before, so that a failed attach gives back only
    // what it took (a repeated attach of a working pod keeps its addresses).
    let held: Vec<u32> = match api.ipam {
        Some(_) => ipam::call(&api, ipam::DEFAULT_TIMEOUT, |reply| IpamRequest::Lookup {
            ident: id.clone(),
            reply,
        })
        .await?
        .iter()
        .map(|a| a.addr)
        .collect(),
        None => Vec::new(),
    };
    let mut taken = Vec::new();
    let wired = async {
        let mut cidrs = Vec::with_capacity(specs.len());
        for spec in specs {
            let c = match spec {
                AddrSpec::Fixed(c) if api.ipam.is_none() || c.addr().is_ipv6() => c,
                AddrSpec::Allocate(_) | AddrSpec::Fixed(_) => {
                    let a = ipam::resolve(&api, &id, spec, ipam::DEFAULT_TIMEOUT).await?;
                    if !held.contains(&a.addr) {
                        taken.push(std::net::Ipv4Addr::from(a.addr));
                    }
                    a.net()
                }
            };
            cidrs.push(c);
        }
        let host = host_netlink()?;
        let ifname = attach::attach(&host, &b.name, b.mtu, &netns, &cidrs)
            .await
            .map_err(attach_error)?;
        Ok::<_, ApiError>((ifname, cidrs))
    }
    .await;
    let (ifname, cidrs) = match wired {
        Ok(w) => w,
        Err(e) => {
            for addr in taken {
                let released =
                    ipam::call(&api, ipam::DEFAULT_TIMEOUT, |reply| IpamRequest::Release {
                        ident: id.clone(),
                        addr: Some(addr),
                        reply,
                    })
                    .await;
                if released.is_err() {
                    warn!(%id, %addr, "attach failed and its address could not be released");
                }
            }
            return Err(e);
        }
    };
    if let (Some(name), Some(holder)) = (dns_name, dns_holder) {
        let v4: Vec<std::net::Ipv4Addr> = cidrs
            .iter()
            .filter_map(|c| match c.addr() {
                std::net::IpAddr::V4(a) => Some(a),
                std::net::IpAddr::V6(_) => None,
            })
            .collect();
        names::register(&api, name, v4, holder).await?;
    }
    api.attachments.record(id.as_str(), &req.netns, &ifname);
    info!(netns = %req.netns, %id, cidrs = ?cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(), "attached");
    Ok(Json(AttachReply { ifname, cidrs }))
}

async fn detach_netns(
    State(api): State<Api>,
    body: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let req: DetachRequest = parse(&body)?;
    let id = attach_ident(req.id.as_deref(), &req.netns)?;
    bridge(&api)?;
    let host = host_netlink()?;
    names::forget(&api, id.as_str()).await;
    api.attachments.forget([id.as_str()]);
    attach::detach(&host, std::path::Path::new(&req.netns))
        .await
        .map_err(attach_error)?;
    if api.ipam.is_some() {
        ipam::call(&api, ipam::DEFAULT_TIMEOUT, |reply| IpamRequest::Release {
            ident: id.clone(),
            addr: None,
            reply,
        })
        .await?;
    }
    info!(netns = %req.netns, %id, "detached");
    Ok(Json(serde_json::json!({})))
}

async fn not_found() -> ApiError {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}
