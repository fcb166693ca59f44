//! What the compiled packet path may call. On the hosts we measure, a call
//! out of a BPF program (a helper, or a BPF-to-BPF call into a compiler
//! built-in such as `memset`) costs about as much as a map lookup, so the
//! code of the established path is kept free of the ones that are not
//! needed. These tests read the embedded object, so they fail as soon as a
//! change makes the compiler emit such a call again.

use object::{Object, ObjectSection, ObjectSymbol, RelocationTarget};
use voxlb::object::{EBPF_OBJECT, PROGRAM_NAME};

/// The names of the functions a program's code calls through BPF-to-BPF
/// call relocations (not helpers: those are immediate calls, without one).
fn calls_of(program: &str) -> Vec<String> {
    let file = object::File::parse(EBPF_OBJECT).expect("the embedded XDP object parses");
    let sym = file
        .symbols()
        .find(|s| s.name() == Ok(program))
        .unwrap_or_else(|| panic!("no symbol {program} in the object"));
    let section = file
        .section_by_index(sym.section_index().expect("program in a section"))
        .expect("program section");
    let (start, end) = (sym.address(), sym.address() + sym.size());
    assert!(end > start, "{program} has a size");
    let mut calls = Vec::new();
    for (offset, rel) in section.relocations() {
        if offset < start || offset >= end {
            continue;
        }
        let RelocationTarget::Symbol(i) = rel.target() else {
            continue;
        };
        let target = file.symbol_by_index(i).expect("relocation symbol");
        // Map references are relocations against the maps' symbols, in a
        // data section; only functions are calls.
        if target.kind() == object::SymbolKind::Text {
            calls.push(target.name().unwrap_or("?").to_string());
        }
    }
    calls
}

#[test]
fn the_packet_path_calls_no_compiler_builtin() {
    let calls = calls_of(PROGRAM_NAME);
    assert!(
        calls.is_empty(),
        "{PROGRAM_NAME} calls {calls:?}: a zero-fill or copy the compiler turned into a \
         byte-loop subprogram call (see lb-common's key padding and `rewrite_l2`)"
    );
}

/// The check above can fail: the tail-called encapsulating program, whose
/// header building is not on the hot path, still calls `memset`.
#[test]
fn the_check_sees_calls_where_there_are_some() {
    let calls = calls_of("voxlb_encap");
    assert!(
        calls.iter().any(|c| c.starts_with("mem")),
        "expected voxlb_encap to call a mem* built-in, found {calls:?}"
    );
}
