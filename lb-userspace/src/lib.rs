//! voxlb control plane: loads and drives the XDP data plane.

pub mod dataplane;
pub mod health;
pub mod object;
pub mod packet;
pub mod xdp;
