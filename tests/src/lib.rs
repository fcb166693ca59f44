//! End-to-end test fixtures for voxlb.
//!
//! - [`agent`]: an agent simulator timing whole agent runs (p50/p99), the
//!   workload of the load-feedback benchmark (`voxlb-agent-sim`).
//! - [`backend`]: the test backend, an HTTPS server that stands in for an
//!   OpenVox compiler (health route, `whoami`, long and catalog-sized
//!   downloads, a control API). The `voxlb-testd` binary runs it; Rust tests
//!   can run it in-process with [`backend::spawn`].
//! - [`bench`]: CPU accounting, `wrk` runs and reports of the end-to-end
//!   benchmark (`voxlb-bench-e2e`).
//! - [`bench_routed`]: the routed-compilers part of that benchmark (IPIP
//!   and GUE through a router).
//! - [`bench_lb`]: the balancers the benchmarks compare (voxlb, HAProxy
//!   `leastconn`) started on a topology, shared by `voxlb-bench-e2e` and
//!   `voxlb-bench-load`.
//! - [`pki`]: a throwaway CA and per-backend certificates.
//! - [`client`]: a small HTTP/1.1 (+TLS) client to talk to backends, through
//!   the load balancer or not.
//! - [`jruby`]: the simulated JRuby pool behind the backend's status API
//!   and catalog compiles (load feedback, issue 16).
//! - [`pattern`]: the deterministic body bytes, to check downloads.
//! - [`daemon`]: the real `voxlb` daemon in a topology, and its CLI.
//! - [`netns`]: namespaces, threads and runtimes inside them, cleanup.
//! - [`multi`]: several LB hosts behind a BGP router (ECMP) or a
//!   keepalived pair (VRRP), in one topology.
//! - [`topology`]: the end-to-end topology (clients, LB, compilers, CAs
//!   on one bridge), shared by the e2e tests, the demo and benchmarks.

pub mod agent;
pub mod backend;
pub mod bench;
pub mod bench_lb;
pub mod bench_routed;
pub mod client;
pub mod daemon;
pub mod encap_hop;
pub mod jruby;
pub mod multi;
pub mod netns;
pub mod pattern;
pub mod pki;
pub mod routed;
pub mod topology;
