//! The veth-peer helper of test topologies and the demo.

use std::path::Path;

use aya::{
    Ebpf,
    programs::{links::FdLink, xdp::XdpMode},
};
use voxlb::dataplane::Result;

use crate::{
    harness::{other, program},
    object::{TEST_OBJECT, VETH_PEER},
};

/// Attach the do-nothing XDP program to `iface` (the veth peer of an
/// interface voxlb runs on) and pin its link at `pin`, so that XDP_TX works
/// across the veth pair after this process exits. A physical NIC does not
/// need it. Runs in the caller's network namespace.
pub fn attach_veth_peer(iface: &str, pin: &Path) -> Result<()> {
    let mut ebpf = Ebpf::load(TEST_OBJECT).map_err(other)?;
    let prog = program(&mut ebpf, VETH_PEER)?;
    prog.load().map_err(other)?;
    let id = prog.attach(iface, XdpMode::Driver).map_err(other)?;
    let link = prog.take_link(id).map_err(other)?;
    FdLink::try_from(link)
        .map_err(other)?
        .pin(pin)
        .map_err(other)?;
    Ok(())
}
