//! Dev-only test kit for voxlb: everything tests, the fuzzer and the
//! benchmarks need around the daemon's library, kept out of the product.
//!
//! - [`packet`]: a builder of Ethernet frames (VLANs, IPv4 options, IPv6
//!   extension headers, fragments) with correct checksums;
//! - [`harness`]: the production XDP program on private maps, run on frames
//!   with BPF_PROG_TEST_RUN, next to the benchmark reflector;
//! - [`veth`]: the do-nothing XDP program a veth peer needs for XDP_TX;
//! - [`fuzz`]: the structure-aware fuzzer and its reference model;
//! - [`skip`]: the one way a test says it did not run;
//! - [`daemon_fixture`]: temp dir and config for daemon integration tests.

pub mod daemon_fixture;
pub mod decap;
pub mod fuzz;
pub mod harness;
pub mod object;
pub mod packet;
pub mod reference;
pub mod skip;
pub mod veth;
