//! The fuzzer's structure-aware mutations: of a frame's description before
//! it is built (IP options, fragments, extension chains, TCP flags and
//! options, MACs, L4 kind, payload), then of its bytes at the offsets its
//! structure gives (VLAN tags, ethertype, version, IHL, lengths, data
//! offset, bit flips, splices, truncation).

use std::{fmt::Write as _, net::IpAddr};

use super::{Rng, model::be16};
use crate::packet::{Frame, L4, flags, l3_offset};

/// Mutations of the frame description (applied before it is built).
#[derive(Clone, Copy, Debug)]
enum SpecOp {
    IpOptions,
    Fragment,
    ExtChain,
    TcpFlags,
    TcpOptions,
    DstMac,
    L4Kind,
    BigPayload,
}

/// Mutations of the built bytes, at offsets the frame's structure gives.
#[derive(Clone, Copy, Debug)]
enum ByteOp {
    Vlans,
    Ethertype,
    Version,
    Ihl,
    IpLength,
    ExtField,
    DataOffset,
    BitFlip,
    ByteSet,
    Pad,
    Splice,
    Truncate,
}

enum Op {
    Spec(SpecOp),
    Byte(ByteOp),
}

const OPS: [Op; 20] = [
    Op::Spec(SpecOp::IpOptions),
    Op::Spec(SpecOp::Fragment),
    Op::Spec(SpecOp::ExtChain),
    Op::Spec(SpecOp::TcpFlags),
    Op::Spec(SpecOp::TcpOptions),
    Op::Spec(SpecOp::DstMac),
    Op::Spec(SpecOp::L4Kind),
    Op::Spec(SpecOp::BigPayload),
    Op::Byte(ByteOp::Vlans),
    Op::Byte(ByteOp::Ethertype),
    Op::Byte(ByteOp::Version),
    Op::Byte(ByteOp::Ihl),
    Op::Byte(ByteOp::IpLength),
    Op::Byte(ByteOp::ExtField),
    Op::Byte(ByteOp::DataOffset),
    Op::Byte(ByteOp::BitFlip),
    Op::Byte(ByteOp::ByteSet),
    Op::Byte(ByteOp::Pad),
    Op::Byte(ByteOp::Splice),
    Op::Byte(ByteOp::Truncate),
];

fn apply_spec(r: &mut Rng, f: &mut Frame, op: SpecOp, log: &mut String) {
    let v6 = f.dst.is_ipv6();
    match op {
        SpecOp::IpOptions if !v6 => {
            let n = r.pick(&[1, 4, 8, 12, 39, 40]);
            f.ip_options = r.bytes(n);
            let _ = write!(log, " ip-options({n})");
        }
        SpecOp::Fragment if !v6 => {
            f.frag = match r.below(6) {
                0 => 0x2000,                        // MF: first fragment
                1 => r.range(1, 0x1fff) as u16,     // later fragment
                2 => 0x2000 | r.range(1, 8) as u16, // middle fragment
                3 => 0x8000,                        // reserved bit only
                4 => 0,                             // DF cleared
                _ => r.next_u64() as u16,
            };
            let _ = write!(log, " frag({:#06x})", f.frag);
        }
        SpecOp::Fragment | SpecOp::ExtChain | SpecOp::IpOptions => {
            // IPv6 (or IPv4 asked for an IPv6 mutation): an extension chain.
            if !v6 {
                return;
            }
            let n = r.range(1, 6);
            if r.chance(30) {
                // Fragment headers' offset, M flag and ID.
                f.frag = match r.below(4) {
                    0 => 0x2000,
                    1 => r.range(1, 0x1fff) as u16,
                    2 => 0x2000 | r.range(1, 8) as u16,
                    _ => r.next_u64() as u16,
                };
                f.ip_id = r.next_u64() as u32;
            }
            for _ in 0..n {
                let kind = r.pick(&[0u8, 43, 60, 51, 44, 60, 0]);
                let len = match kind {
                    44 => 8,
                    51 => 4 * r.range(2, 16),
                    _ => 8 * r.range(1, 8),
                };
                f.ext.push(lb_ext(kind, len));
            }
            let kinds: Vec<String> = f
                .ext
                .iter()
                .map(|e| format!("{}/{}", e.kind, e.len))
                .collect();
            let _ = write!(log, " ext[{}]", kinds.join(","));
        }
        SpecOp::TcpFlags => {
            if let L4::Tcp { flags, .. } = &mut f.l4 {
                *flags = r.byte();
                let _ = write!(log, " flags({:#04x})", *flags);
            }
        }
        SpecOp::TcpOptions => {
            if let L4::Tcp { options, .. } = &mut f.l4 {
                let n = r.range(1, 40);
                *options = r.bytes(n);
                let _ = write!(log, " tcp-options({n})");
            }
        }
        SpecOp::DstMac => {
            f.dst_mac = match r.below(3) {
                0 => [0xff; 6],
                1 => [0x01, 0x00, 0x5e, 0, 0, r.byte()],
                _ => {
                    let mut m = [0u8; 6];
                    m.copy_from_slice(&r.bytes(6));
                    m
                }
            };
            let _ = write!(log, " dst-mac({:02x?})", f.dst_mac);
        }
        SpecOp::L4Kind => {
            let (sport, dport) = match f.l4 {
                L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport } => (sport, dport),
                _ => (1, 1),
            };
            f.l4 = match r.below(4) {
                0 => L4::Udp { sport, dport },
                1 => L4::Tcp {
                    sport,
                    dport,
                    flags: flags::SYN,
                    options: Vec::new(),
                },
                2 => L4::Icmp,
                _ => L4::Other(r.pick(&[0, 1, 43, 44, 47, 50, 51, 58, 59, 60, 132, 255])),
            };
            let _ = write!(log, " l4({:?})", f.l4);
        }
        SpecOp::BigPayload => {
            let n = r.range(200, 1400);
            f.payload = r.bytes(n);
            let _ = write!(log, " payload({n})");
        }
    }
}

fn lb_ext(kind: u8, len: usize) -> crate::packet::Ext {
    crate::packet::Ext { kind, len }
}

/// Where the headers of a (still valid) built frame are.
struct Layout {
    ethertype_at: usize,
    l3: Option<usize>,
    v6: bool,
    /// Offsets of IPv6 extension headers.
    ext: Vec<usize>,
    l4: Option<usize>,
}

fn layout(f: &[u8], spec: Option<&Frame>) -> Layout {
    let l3 = l3_offset(f);
    let mut lay = Layout {
        ethertype_at: l3 - 2,
        l3: None,
        v6: false,
        ext: Vec::new(),
        l4: None,
    };
    let Some(spec) = spec else {
        return lay;
    };
    lay.l3 = Some(l3);
    match spec.dst {
        IpAddr::V4(_) => {
            lay.l4 = Some(l3 + usize::from(f[l3] & 0x0f) * 4);
        }
        IpAddr::V6(_) => {
            lay.v6 = true;
            let mut off = l3 + 40;
            for e in &spec.ext {
                lay.ext.push(off);
                off += e.len;
            }
            lay.l4 = Some(off);
        }
    }
    lay
}

pub(super) fn set_u16(f: &mut [u8], at: usize, v: u16) -> bool {
    if at + 2 > f.len() {
        return false;
    }
    f[at..at + 2].copy_from_slice(&v.to_be_bytes());
    true
}

fn apply_byte(r: &mut Rng, f: &mut Vec<u8>, lay: &Layout, op: ByteOp, log: &mut String) {
    let len = f.len();
    match op {
        ByteOp::Vlans => {
            let n = r.range(1, 3);
            let mut tags = Vec::new();
            for _ in 0..n {
                let tpid: u16 = r.pick(&[0x8100, 0x88a8, 0x8100, 0x9100]);
                tags.extend_from_slice(&tpid.to_be_bytes());
                tags.extend_from_slice(&(r.below(4096) as u16).to_be_bytes());
            }
            // Tags go between the source MAC and the ethertype.
            f.splice(12..12, tags);
            let _ = write!(log, " vlans({n})");
        }
        ByteOp::Ethertype => {
            let at = if r.chance(50) { 12 } else { lay.ethertype_at };
            let t: u16 = r.pick(&[0x0800, 0x86dd, 0x8100, 0x88a8, 0x0806, 0x9100]);
            let t = if r.chance(15) { r.next_u64() as u16 } else { t };
            if set_u16(f, at, t) {
                let _ = write!(log, " ethertype@{at}={t:#06x}");
            }
        }
        ByteOp::Version => {
            if let Some(l3) = lay.l3.filter(|o| *o < len) {
                let v = r.pick(&[4u8, 6, 0, 5, 15]);
                f[l3] = (v << 4) | (f[l3] & 0x0f);
                let _ = write!(log, " version={v}");
            }
        }
        ByteOp::Ihl => {
            if let Some(l3) = lay.l3.filter(|o| *o < len && !lay.v6) {
                let ihl = r.below(16) as u8;
                f[l3] = (f[l3] & 0xf0) | ihl;
                let _ = write!(log, " ihl={ihl}");
            }
        }
        ByteOp::IpLength => {
            let Some(l3) = lay.l3 else { return };
            let at = if lay.v6 { l3 + 4 } else { l3 + 2 };
            if at + 2 > len {
                return;
            }
            let cur = be16(f, at) as i64;
            let v = match r.below(7) {
                0 => 0,
                1 => 0xffff,
                2 => r.pick(&[19, 20, 21, 39, 40, 41]),
                3 => cur + r.range(1, 8) as i64,
                4 => cur - r.range(1, 8) as i64,
                5 => (len - l3) as i64 + r.range(0, 3) as i64 - 1,
                _ => r.below(0x10000) as i64,
            };
            let v = v.clamp(0, 0xffff) as u16;
            set_u16(f, at, v);
            let _ = write!(log, " ip-length={v}");
        }
        ByteOp::ExtField => {
            if lay.ext.is_empty() {
                return;
            }
            let at = lay.ext[r.below(lay.ext.len())];
            if r.chance(50) {
                if at < len {
                    let any = r.byte();
                    f[at] = r.pick(&[0u8, 6, 17, 43, 44, 51, 59, 60, 58, any]);
                    let _ = write!(log, " ext-next@{at}={}", f[at]);
                }
            } else if at + 1 < len {
                let any = r.byte();
                f[at + 1] = r.pick(&[0u8, 1, 2, 0xff, any]);
                let _ = write!(log, " ext-len@{at}={}", f[at + 1]);
            }
        }
        ByteOp::DataOffset => {
            if let Some(at) = lay.l4.map(|o| o + 12).filter(|o| *o < len) {
                let d = r.below(16) as u8;
                f[at] = (d << 4) | (f[at] & 0x0f);
                let _ = write!(log, " doff={d}");
            }
        }
        ByteOp::BitFlip => {
            let at = r.below(len.min(128));
            let bit = r.below(8);
            f[at] ^= 1 << bit;
            let _ = write!(log, " flip@{at}.{bit}");
        }
        ByteOp::ByteSet => {
            let at = r.below(len.min(128));
            let any = r.byte();
            f[at] = r.pick(&[0u8, 0xff, 0x80, any]);
            let _ = write!(log, " set@{at}={:#04x}", f[at]);
        }
        ByteOp::Pad => {
            let n = r.range(1, 64);
            f.extend(std::iter::repeat_n(0u8, n));
            let _ = write!(log, " pad({n})");
        }
        ByteOp::Splice => {
            let at = r.range(12, len.min(120));
            if r.chance(50) {
                // Never below the 14 bytes the kernel insists on.
                let n = r.range(1, 8).min(len - at).min(len - 14);
                f.drain(at..at + n);
                let _ = write!(log, " delete@{at}({n})");
            } else {
                let n = r.range(1, 8);
                f.splice(at..at, r.bytes(n));
                let _ = write!(log, " insert@{at}({n})");
            }
        }
        ByteOp::Truncate => {
            // Mostly inside the headers, where the parser lives.
            let hi = if r.chance(80) { len.min(140) } else { len };
            if hi > 14 {
                let cut = r.range(14, hi - 1);
                f.truncate(cut);
                let _ = write!(log, " truncate({cut})");
            }
        }
    }
}

/// A base frame with 1–3 random mutations: those of its description first
/// (a raw frame has none to take them), then those of its bytes. What was
/// done is appended to `log`.
pub(super) fn mutate(r: &mut Rng, base: Result<Frame, Vec<u8>>, log: &mut String) -> Vec<u8> {
    let n = r.range(1, 3);
    let mut spec_ops = Vec::new();
    let mut byte_ops = Vec::new();
    for _ in 0..n {
        match OPS[r.below(OPS.len())] {
            Op::Spec(s) => spec_ops.push(s),
            Op::Byte(b) => byte_ops.push(b),
        }
    }
    let (mut frame, spec) = match base {
        Ok(mut spec) => {
            for op in spec_ops {
                apply_spec(r, &mut spec, op, log);
            }
            (spec.build(), Some(spec))
        }
        Err(raw) => (raw, None),
    };
    let lay = layout(&frame, spec.as_ref());
    // Field edits first, then edits that move bytes, truncation last.
    byte_ops.sort_by_key(|op| match op {
        ByteOp::Truncate => 2,
        ByteOp::Vlans | ByteOp::Splice | ByteOp::Pad => 1,
        _ => 0,
    });
    for op in byte_ops {
        apply_byte(r, &mut frame, &lay, op, log);
    }
    frame
}
