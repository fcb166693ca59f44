//! voxlb control plane: loads and drives the XDP data plane.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dataplane;
pub mod fuzz;
pub mod health;
pub mod load;
pub mod metrics;
pub mod neigh;
pub mod object;
pub mod packet;
pub mod reconcile;
pub mod retire;
pub mod state;
pub mod xdp;
