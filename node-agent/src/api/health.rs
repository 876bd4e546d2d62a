// SPDX-License-Identifier: Apache-2.0
//! `GET /healthz` and `GET /readyz`, for the kubelet's probes (and anyone else).
//!
//! Liveness asks only this process: the router and the IPAM task each answer a status request
//! within [`ANSWER_WITHIN`]. It never depends on remote peers, so a partition or a slow peer
//! never gets the agent restarted (which would not help and would interrupt the data plane).
//!
//! Readiness adds what a pod on this node needs: IPAM can allocate now (a ring exists, or
//! enough peers are known for the first split). The data plane needs no check here: the
//! agent does not serve at all until its bridge and TAP port are set up.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{ask, ipam, Api};
use crate::router::ApiCommand;

/// How long each task may take to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// `GET /healthz`: 200 `ok` while the event loops answer, else 503 naming the one that did not.
pub(super) async fn healthz(State(api): State<Api>) -> Response {
    match alive(&api).await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

/// `GET /readyz`: 200 `ready` when this node can serve pods, else 503 with the reason.
pub(super) async fn readyz(State(api): State<Api>) -> Response {
    if let Err(why) = alive(&api).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response();
    }
    if api.ipam.is_some() {
        match tokio::time::timeout(ANSWER_WITHIN, ipam::status(&api)).await {
            Ok(Some(report)) if report.ready => {}
            Ok(Some(report)) => {
                let why = format!("not ready: IP allocation: {}\n", report.status);
                return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            }
            _ => {
                let why = "not ready: IP allocation does not answer\n";
                return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
            }
        }
    }
    (StatusCode::OK, "ready\n").into_response()
}

/// Whether the router and IPAM answer in time.
async fn alive(api: &Api) -> Result<(), &'static str> {
    tokio::time::timeout(ANSWER_WITHIN, ask(api, ApiCommand::Report))
        .await
        .map_err(|_| "the router does not answer")?
        .map_err(|_| "the router has stopped")?;
    if api.ipam.is_some() {
        tokio::time::timeout(ANSWER_WITHIN, ipam::status(api))
            .await
            .map_err(|_| "IP allocation does not answer")?
            .ok_or("IP allocation has stopped")?;
    }
    Ok(())
}
