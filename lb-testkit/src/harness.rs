//! BPF_PROG_TEST_RUN harness: the production program on private (unpinned)
//! maps, attached nowhere, plus the benchmark reflector from the test
//! object. Each [`TestDataPlane`] is an independent copy of the data plane;
//! it derefs to the daemon's [`XdpDataPlane`], so tests program it through
//! the same code the daemon uses.

use std::ops::{Deref, DerefMut};

use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::maps as names;
use voxlb::{
    dataplane::{DataPlaneError, Result},
    object::{EBPF_OBJECT, PROGRAM_NAME},
    xdp::XdpDataPlane,
};

use crate::object::{BENCH_FLOWS4, BENCH_PROGRAMS, BENCH_REGIONS, TEST_OBJECT};

/// Result of one BPF_PROG_TEST_RUN.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// XDP action (`XDP_PASS` = 2, `XDP_TX` = 3, `XDP_DROP` = 1).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Kernel-measured average time per repeat.
    pub duration: std::time::Duration,
}

/// The production object (program loaded, maps private) and the test object.
pub struct TestDataPlane {
    product: Ebpf,
    test: Ebpf,
    dp: XdpDataPlane,
}

/// Flatten an error and its sources into one line (aya keeps the errno in
/// the source).
pub(crate) fn other<E: Into<Box<dyn std::error::Error>>>(e: E) -> DataPlaneError {
    DataPlaneError::Other(voxlb::dataplane::flatten_error(e))
}

pub(crate) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| other(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(other)
}

impl TestDataPlane {
    /// Load both objects; the production maps get a flow table of
    /// `flow_capacity` entries.
    pub fn load(flow_capacity: u32) -> Result<Self> {
        let mut product = EbpfLoader::new()
            .map_max_entries(names::FLOWS4, flow_capacity)
            .map_max_entries(names::FLOWS6, flow_capacity)
            .load(EBPF_OBJECT)
            .map_err(other)?;
        voxlb::xdp::install_tail_programs(&mut product)?;
        voxlb::xdp::calibrate_clock(&mut product)?;
        program(&mut product, PROGRAM_NAME)?.load().map_err(other)?;
        let mut test = Ebpf::load(TEST_OBJECT).map_err(other)?;
        for name in BENCH_PROGRAMS {
            program(&mut test, name)?.load().map_err(other)?;
        }
        let dp = XdpDataPlane::from_unpinned(&mut product)?;
        Ok(TestDataPlane { product, test, dp })
    }

    /// A map of the test object, by name.
    fn test_map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.test
            .map_mut(name)
            .ok_or_else(|| other(format!("map {name} missing from the test object")))
    }

    /// Put `key` in the benchmark floor's own IPv4 flow table.
    pub fn insert_bench_flow4(&mut self, key: &lb_common::FlowKeyV4) -> Result<()> {
        let map = self.test_map(BENCH_FLOWS4)?;
        let mut flows: aya::maps::HashMap<_, lb_common::FlowKeyV4, lb_common::FlowValue> =
            aya::maps::HashMap::try_from(map).map_err(other)?;
        flows
            .insert(key, lb_common::FlowValue::default(), 0)
            .map_err(other)
    }

    /// Give the flood floor's service `service` two table copies of `size`
    /// slots, as a production service of that table size has: copy 0 at
    /// slot 0, copy 1 after it. Without it the floor's regions are empty
    /// and every SYN reads slot 0 (always cached), where a real SYN reads a
    /// slot of its flow's in the whole table.
    pub fn set_bench_regions(&mut self, service: u32, size: u32) -> Result<()> {
        let map = self.test_map(BENCH_REGIONS)?;
        let mut regions: aya::maps::Array<_, lb_common::TableRegion> =
            aya::maps::Array::try_from(map).map_err(other)?;
        for copy in 0..2 {
            let r = lb_common::TableRegion {
                base: copy * size,
                size,
            };
            regions.set(service * 2 + copy, r, 0).map_err(other)?;
        }
        Ok(())
    }

    /// Run `program_name` ([`PROGRAM_NAME`], or one of the test object's
    /// [`BENCH_PROGRAMS`]) on one frame, `repeat` times on the same buffer.
    pub fn test_run(&mut self, program_name: &str, frame: &[u8], repeat: u32) -> Result<RunOutput> {
        let ebpf = if BENCH_PROGRAMS.contains(&program_name) {
            &mut self.test
        } else {
            &mut self.product
        };
        let prog = program(ebpf, program_name)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        let r = prog.test_run(opts).map_err(other)?;
        out.truncate(r.data_size_out as usize);
        Ok(RunOutput {
            action: r.return_value,
            frame: out,
            duration: r.duration,
        })
    }
}

impl Deref for TestDataPlane {
    type Target = XdpDataPlane;
    fn deref(&self) -> &XdpDataPlane {
        &self.dp
    }
}

impl DerefMut for TestDataPlane {
    fn deref_mut(&mut self) -> &mut XdpDataPlane {
        &mut self.dp
    }
}
