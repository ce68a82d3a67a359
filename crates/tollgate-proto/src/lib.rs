//! The Tollgate decision API (`proto/tollgate/v1/decision.proto`), generated at build time.
//!
//! Edges are clients of `DecisionService`; the decision crate implements it, and also the part
//! of Envoy's rate limit service (`proto/envoy/service/ratelimit/v3/rls.proto`) that lets Envoy
//! proxies share Tollgate's counters.

#![allow(clippy::all)]

/// Version 1 of the decision API.
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}

/// Envoy's rate limit service, `envoy.service.ratelimit.v3` (the part Tollgate serves).
pub mod envoy_rls {
    tonic::include_proto!("envoy.service.ratelimit.v3");
}
