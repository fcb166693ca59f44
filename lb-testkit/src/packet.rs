//! A small frame builder for tests, fuzzing and benchmarks: Ethernet with
//! optional VLAN tags, IPv4 (with options and fragment bits) or IPv6 (with
//! extension headers), and TCP/UDP/ICMP, with correct lengths and
//! checksums unless a test breaks them on purpose afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP flag bits.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// The L4 part of a frame.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        /// TCP options (padded to a multiple of 4 by the builder).
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP (v4) or ICMPv6 echo request.
    Icmp,
    /// An ICMP (v4) or ICMPv6 message of any type: `rest` is the header's
    /// second word (unused, MTU, pointer); the frame's payload follows (for
    /// an error, the quoted packet: see [`Frame::quote`]).
    IcmpMsg {
        ty: u8,
        code: u8,
        rest: u32,
    },
    /// Any other protocol number, payload only.
    Other(u8),
}

/// An IPv6 extension header: protocol number and total length in bytes
/// (a multiple of 8; of 4 for AH).
#[derive(Clone, Copy, Debug)]
pub struct Ext {
    pub kind: u8,
    pub len: usize,
}

/// A frame to build.
#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// (TPID, TCI) per tag, outermost first.
    pub vlans: Vec<(u16, u16)>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IPv4 options (padded to a multiple of 4).
    pub ip_options: Vec<u8>,
    /// IPv4 flags + fragment offset field (host order), e.g. 0x4000 = DF.
    /// Also an IPv6 fragment header's fields: its offset is `frag & 0x1fff`
    /// and its M flag is the MF bit (0x2000).
    pub frag: u16,
    /// IPv4 identification (low 16 bits), or an IPv6 fragment header's.
    pub ip_id: u32,
    /// IPv6 extension headers, in order.
    pub ext: Vec<Ext>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

/// Our LB interface's MAC in tests.
pub const LB_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
/// The client (or upstream router) MAC in tests.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xc1];

impl Frame {
    /// A TCP segment from `src:sport` to `dst:dport`.
    pub fn tcp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, flags: u8) -> Self {
        Frame {
            dst_mac: LB_MAC,
            src_mac: CLIENT_MAC,
            vlans: Vec::new(),
            src,
            dst,
            ip_options: Vec::new(),
            frag: 0x4000,
            ip_id: 0x1234,
            ext: Vec::new(),
            l4: L4::Tcp {
                sport,
                dport,
                flags,
                options: Vec::new(),
            },
            payload: Vec::new(),
        }
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Frame {
            l4: L4::Udp { sport, dport },
            ..Frame::tcp(src, sport, dst, dport, 0)
        }
    }

    /// An ICMP echo request.
    pub fn icmp(src: IpAddr, dst: IpAddr) -> Self {
        Frame {
            l4: L4::Icmp,
            payload: b"voxlb-ping".to_vec(),
            ..Frame::tcp(src, 0, dst, 0, 0)
        }
    }

    /// An ICMP/ICMPv6 message of type `ty`, code `code`, second header word
    /// `rest`, with `body` after the header (for an error: [`Frame::quote`]).
    pub fn icmp_msg(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: u32, body: &[u8]) -> Self {
        Frame {
            l4: L4::IcmpMsg { ty, code, rest },
            payload: body.to_vec(),
            ..Frame::tcp(src, 0, dst, 0, 0)
        }
    }

    /// The IP packet of this frame (what an ICMP error quotes), cut to
    /// `len` bytes at most.
    pub fn quote(&self, len: usize) -> Vec<u8> {
        let f = self.build();
        let l3 = l3_offset(&f);
        let mut q = f[l3..].to_vec();
        q.truncate(len);
        q
    }

    pub fn with_ip_id(mut self, id: u32) -> Self {
        self.ip_id = id;
        self
    }

    pub fn with_payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    pub fn with_vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    pub fn with_ip_options(mut self, o: &[u8]) -> Self {
        self.ip_options = o.to_vec();
        self
    }

    pub fn with_ext(mut self, kind: u8, len: usize) -> Self {
        self.ext.push(Ext { kind, len });
        self
    }

    pub fn with_frag(mut self, frag: u16) -> Self {
        self.frag = frag;
        self
    }

    pub fn with_dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    fn l4_proto(&self) -> u8 {
        match (&self.l4, self.dst) {
            (L4::Tcp { .. }, _) => 6,
            (L4::Udp { .. }, _) => 17,
            (L4::Icmp, IpAddr::V4(_)) => 1,
            (L4::Icmp, IpAddr::V6(_)) => 58,
            (L4::IcmpMsg { .. }, IpAddr::V4(_)) => 1,
            (L4::IcmpMsg { .. }, IpAddr::V6(_)) => 58,
            (L4::Other(p), _) => *p,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
                options,
            } => {
                let mut opts = options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&1000u32.to_be_bytes()); // seq
                b.extend_from_slice(&0u32.to_be_bytes()); // ack
                b.push((((20 + opts.len()) / 4) as u8) << 4);
                b.push(*flags);
                b.extend_from_slice(&64240u16.to_be_bytes());
                b.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
                b.extend_from_slice(&opts);
            }
            L4::Udp { sport, dport } => {
                b.extend_from_slice(&sport.to_be_bytes());
                b.extend_from_slice(&dport.to_be_bytes());
                b.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                b.extend_from_slice(&[0, 0]);
            }
            L4::Icmp => {
                let t = if self.dst.is_ipv4() { 8 } else { 128 };
                b.extend_from_slice(&[t, 0, 0, 0, 0, 1, 0, 1]);
            }
            L4::IcmpMsg { ty, code, rest } => {
                b.extend_from_slice(&[*ty, *code, 0, 0]);
                b.extend_from_slice(&rest.to_be_bytes());
            }
            L4::Other(_) => {}
        }
        b.extend_from_slice(&self.payload);
        let csum_at = match self.l4 {
            L4::Tcp { .. } => Some(16),
            L4::Udp { .. } => Some(6),
            L4::Icmp | L4::IcmpMsg { .. } => Some(2),
            L4::Other(_) => None,
        };
        if let Some(at) = csum_at {
            let mut sum = 0u32;
            let v4_icmp = matches!(self.l4, L4::Icmp | L4::IcmpMsg { .. }) && self.dst.is_ipv4();
            if !v4_icmp {
                sum = pseudo_header(self.src, self.dst, self.l4_proto(), b.len());
            }
            let c = fold(sum + sum_words(&b));
            let c = if c == 0 && matches!(self.l4, L4::Udp { .. }) {
                0xffff
            } else {
                c
            };
            b[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        b
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for (tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                f.extend_from_slice(&ipv4_header(
                    s,
                    d,
                    &self.ip_options,
                    self.frag,
                    self.ip_id as u16,
                    self.l4_proto(),
                    l4.len(),
                ));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&ipv6_header(
                    s,
                    d,
                    &self.ext,
                    (self.frag, self.ip_id),
                    self.l4_proto(),
                    l4.len(),
                ));
            }
            _ => panic!("mixed address families in a test frame"),
        }
        f.extend_from_slice(&l4);
        f
    }
}

fn ipv4_header(
    s: Ipv4Addr,
    d: Ipv4Addr,
    options: &[u8],
    frag: u16,
    id: u16,
    proto: u8,
    l4_len: usize,
) -> Vec<u8> {
    let mut opts = options.to_vec();
    while !opts.len().is_multiple_of(4) {
        opts.push(0);
    }
    let ihl = 20 + opts.len();
    let mut h = Vec::with_capacity(ihl);
    h.push(0x40 | (ihl / 4) as u8);
    h.push(0);
    h.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&frag.to_be_bytes());
    h.push(64);
    h.push(proto);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&opts);
    let c = fold(sum_words(&h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// `frag`: the fragment fields (see [`Frame::frag`], [`Frame::ip_id`])
/// written into every fragment header of the chain.
fn ipv6_header(
    s: Ipv6Addr,
    d: Ipv6Addr,
    ext: &[Ext],
    frag: (u16, u32),
    proto: u8,
    l4_len: usize,
) -> Vec<u8> {
    let ext_len: usize = ext.iter().map(|e| e.len).sum();
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&((ext_len + l4_len) as u16).to_be_bytes());
    h.push(ext.first().map_or(proto, |e| e.kind));
    h.push(64);
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    for (i, e) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |n| n.kind);
        let mut b = vec![0u8; e.len.max(8)];
        b[0] = next;
        b[1] = if e.kind == 51 {
            (e.len / 4 - 2) as u8
        } else {
            (e.len / 8 - 1) as u8
        };
        if e.kind == 44 && e.len == 8 {
            let off_m = ((frag.0 & 0x1fff) << 3) | u16::from(frag.0 & 0x2000 != 0);
            b[2..4].copy_from_slice(&off_m.to_be_bytes());
            b[4..8].copy_from_slice(&frag.1.to_be_bytes());
        }
        if e.kind != 51 && e.kind != 44 && e.len > 2 {
            // PadN option filling the rest of the header.
            b[2] = 1;
            b[3] = (e.len - 4) as u8;
        }
        h.extend_from_slice(&b[..e.len]);
    }
    h
}

fn pseudo_header(s: IpAddr, d: IpAddr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::new();
    match (s, d) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => {}
    }
    sum_words(&p)
}

fn sum_words(b: &[u8]) -> u32 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum = sum.wrapping_add(w as u32);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Offsets of interesting fields in a built frame, for tests that corrupt them.
pub fn l3_offset(frame: &[u8]) -> usize {
    let mut off = 12;
    while off + 2 <= frame.len() {
        let t = u16::from_be_bytes([frame[off], frame[off + 1]]);
        if t == 0x8100 || t == 0x88a8 {
            off += 4;
        } else {
            return off + 2;
        }
    }
    off
}

/// An ARP request frame (not IP).
pub fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[10, 0, 0, 1]);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[10, 0, 0, 100]);
    f
}

/// `frame` cut to its L3 header plus `n` bytes of payload, with the IP
/// length fields saying so (a short but well-formed message).
pub fn cut_after_l3(frame: &[u8], ip_header: usize, n: usize) -> Vec<u8> {
    let l3 = l3_offset(frame);
    let mut f = frame[..l3 + ip_header + n].to_vec();
    if f[l3] >> 4 == 4 {
        let len = (ip_header + n) as u16;
        f[l3 + 2..l3 + 4].copy_from_slice(&len.to_be_bytes());
    } else {
        let len = (ip_header - 40 + n) as u16;
        f[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
    }
    f
}
