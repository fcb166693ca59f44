//! voxlb control plane: loads and drives the XDP data plane.

pub mod announce;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod decap;
pub mod docs;
pub mod fitness;
pub mod forwarding;
pub mod health;
pub mod load;
pub mod metrics;
pub mod neigh;
pub mod notify;
pub mod object;
pub mod reconcile;
pub mod retire;
pub mod route;
pub mod state;
pub mod tables;
pub mod telemetry;
pub mod top;
pub mod xdp;
