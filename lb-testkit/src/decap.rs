//! BPF_PROG_TEST_RUN for the compiler-side decapsulator: the production
//! decap object on private (unpinned) maps, attached nowhere, programmed
//! through the same [`DecapMaps`] the `voxlb decap` command uses.

use aya::{
    Ebpf,
    programs::{TestRun, TestRunOptions, Xdp},
};
use voxlb::{
    decap::{DecapError, DecapMaps},
    object::{DECAP_OBJECT, DECAP_PROGRAM_NAME},
};

use crate::harness::RunOutput;

/// One private copy of the decapsulator.
pub struct DecapTestRun {
    ebpf: Ebpf,
    /// Its maps (VIPs, host addresses, GUE port, counters).
    pub maps: DecapMaps,
}

fn err<E: std::fmt::Display>(e: E) -> DecapError {
    DecapError::Other(e.to_string())
}

impl DecapTestRun {
    pub fn load() -> Result<Self, DecapError> {
        let mut ebpf = Ebpf::load(DECAP_OBJECT).map_err(err)?;
        let maps = DecapMaps::from_ebpf(&mut ebpf)?;
        let prog: &mut Xdp = ebpf
            .program_mut(DECAP_PROGRAM_NAME)
            .ok_or_else(|| err("decap program missing"))?
            .try_into()
            .map_err(err)?;
        prog.load().map_err(err)?;
        Ok(DecapTestRun { ebpf, maps })
    }

    /// Run the program once on `frame`.
    pub fn run(&mut self, frame: &[u8]) -> Result<RunOutput, DecapError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(DECAP_PROGRAM_NAME)
            .ok_or_else(|| err("decap program missing"))?
            .try_into()
            .map_err(err)?;
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = 1;
        let r = prog.test_run(opts).map_err(err)?;
        out.truncate(r.data_size_out as usize);
        Ok(RunOutput {
            action: r.return_value,
            frame: out,
            duration: r.duration,
        })
    }
}
