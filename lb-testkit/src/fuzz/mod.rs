//! Structure-aware fuzzing of the XDP program (`cargo xtask fuzz`).
//!
//! Used by `examples/fuzz_dataplane.rs` and by the regression replay test
//! (`tests/fuzz_regressions.rs`). One file a part:
//! - [`world`](World): a set of VIPs, backends, Maglev tables and CA
//!   targets, written into a private copy of the data plane, and the
//!   changes the daemon makes to them;
//! - `model`: a **reference model** of the program ([`World::expect`]): a
//!   separate, slice-based re-implementation of "what should happen to this
//!   frame", written from the reason codes' definitions, not from the eBPF
//!   code;
//! - `check`: the checks of a run against the model and the data plane's
//!   rules ([`World::check`], [`check_counters`]);
//! - `generate`: a **generator** ([`Generator`]) of valid frames of each
//!   input class (compiler, CA and UDP VIPs over IPv4/IPv6, non-VIP
//!   traffic, non-IP, ICMP errors about VIP replies, first and later
//!   fragments), given 1–3 structure-aware mutations (`mutate`), after a
//!   sweep that truncates rich frames at every byte (`sweep`);
//! - `regression`: the saved failing inputs ([`Regression`]);
//! - `rng`: the seedable random stream every case is drawn from ([`Rng`]).
//!
//! [`World::check`] compares a BPF_PROG_TEST_RUN result with the model and
//! with the model-independent rules of the data plane (a frame not forwarded
//! is untouched; a forwarded one differs only in its MACs, goes to a backend
//! of the VIP's own service, and a CA VIP's only to a CA).

use lb_common::{Reason, reason::Verdict};

mod check;
mod generate;
mod model;
mod mutate;
mod regression;
mod rng;
mod sweep;
mod world;

pub use check::{Violation, check_counters};
pub use generate::{Case, Class, Generator, ROUTER4, flow_case, router6};
pub use model::{Datagram, Expected};
pub use regression::Regression;
pub use rng::Rng;
pub use world::{
    FlowEntry, FlowId, ModelFlows, PORT, TABLE, UDP_PORT, VIP4, VIP4_CA, VIP4_CA_NONE, VIP4_EMPTY,
    VIP4_UDP, VIP4_UNINSTALLED, World, backend_mac, vip6, vip6_ca,
};

/// Reasons only a routed (`ipip`/`gue`) backend can give. The fuzz world
/// forwards by L2 only: these are proven by the encapsulation packet tests
/// (`lb-userspace/tests/encap_packets.rs`), whose outputs the model would
/// have to rebuild byte for byte.
pub const ROUTED_ONLY: [Reason; 4] = [
    Reason::TxTooBig,
    Reason::DropTooBigNoDf,
    Reason::DropNoEgress,
    Reason::DropEncap,
];

/// XDP action codes as BPF_PROG_TEST_RUN returns them.
pub use lb_common::reason::action::{XDP_DROP, XDP_PASS, XDP_TX};

/// The XDP action a reason implies.
pub fn action_of(r: Reason) -> u32 {
    match r.verdict() {
        Verdict::Tx => XDP_TX,
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
    }
}

/// Name of an XDP action code.
pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_DROP => "drop",
        XDP_PASS => "pass",
        XDP_TX => "tx",
        _ => "other",
    }
}
