//! The Tollgate decision API (`proto/tollgate/v1/decision.proto`), generated at build time.
//!
//! Edges are clients of `DecisionService`; the decision crate implements it.

#![allow(clippy::all)]

/// Version 1 of the decision API.
pub mod v1 {
    tonic::include_proto!("tollgate.v1");
}
