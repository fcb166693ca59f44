//! voxlb control plane: loads and drives the XDP data plane.

pub mod config;
pub mod dataplane;
pub mod health;
pub mod object;
pub mod reconcile;
pub mod state;
