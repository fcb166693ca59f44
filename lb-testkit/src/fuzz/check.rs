//! The checks of a fuzz run: a BPF_PROG_TEST_RUN result against the
//! model's expectation, and against the rules of the data plane that hold
//! whatever the model says (a frame not forwarded is untouched; a forwarded
//! one differs only in its MACs, goes to a backend of the VIP's own service,
//! and a CA VIP's only to a CA).

use lb_common::{KIND_CA, Reason};

use super::{Expected, World, XDP_DROP, XDP_PASS, XDP_TX, action_name, action_of};
use crate::harness::RunOutput;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Short class of the problem (for the summary).
    pub kind: &'static str,
    pub detail: String,
}

fn violation(kind: &'static str, detail: String) -> Violation {
    Violation { kind, detail }
}

impl World {
    /// Check one run against the model and the data plane's rules. The
    /// reason counters are checked apart ([`check_counters`]): reading them
    /// costs 17 map lookups, so the fuzzer does it per batch.
    pub fn check(&self, frame: &[u8], out: &RunOutput) -> (Expected, Vec<Violation>) {
        let exp = self.expect(frame);
        (exp, self.verify(frame, out, &exp))
    }

    /// Check one run against an expectation from [`Self::expect`] or
    /// [`Self::step`] and against the data plane's rules.
    pub fn verify(&self, frame: &[u8], out: &RunOutput, exp: &Expected) -> Vec<Violation> {
        let exp = *exp;
        let mut v = Vec::new();
        let want = action_of(exp.reason);
        if out.action != want {
            v.push(violation(
                "verdict",
                format!(
                    "action {} but the model says {} ({})",
                    action_name(out.action),
                    action_name(want),
                    exp.reason.label()
                ),
            ));
        }
        // Rules that hold whatever the model says.
        match out.action {
            XDP_TX => v.extend(self.check_tx(frame, out, &exp)),
            XDP_PASS | XDP_DROP => {
                if out.frame != frame {
                    v.push(violation(
                        "modified",
                        format!(
                            "{} frame changed (first difference at byte {})",
                            action_name(out.action),
                            first_difference(frame, &out.frame)
                        ),
                    ));
                }
            }
            other => v.push(violation("verdict", format!("unexpected action {other}"))),
        }
        v
    }

    fn check_tx(&self, frame: &[u8], out: &RunOutput, exp: &Expected) -> Vec<Violation> {
        let mut v = Vec::new();
        let o = &out.frame;
        if o.len() != frame.len() || o.get(12..) != frame.get(12..) {
            v.push(violation(
                "rewrite",
                format!(
                    "forwarded frame differs beyond the MACs (lengths {} -> {}, first difference at byte {})",
                    frame.len(),
                    o.len(),
                    first_difference(&frame[12..], o.get(12..).unwrap_or(&[])) + 12
                ),
            ));
        }
        if o.len() >= 12 && o[6..12] != frame[0..6] {
            v.push(violation(
                "rewrite",
                "source MAC is not the frame's original destination".into(),
            ));
        }
        let Some(vip) = exp.vip else {
            v.push(violation(
                "tx-not-vip",
                "forwarded a frame whose destination is not a VIP".into(),
            ));
            return v;
        };
        let mac = &o[0..6.min(o.len())];
        let Some((id, b)) = self.backends.iter().find(|(_, b)| b.mac[..] == *mac) else {
            v.push(violation(
                "backend",
                format!("forwarded to unknown MAC {mac:02x?}"),
            ));
            return v;
        };
        if b.service_id != vip.service_id {
            v.push(violation(
                "backend",
                format!(
                    "service {} traffic sent to backend {id} of service {}",
                    vip.service_id, b.service_id
                ),
            ));
        }
        if (vip.kind == KIND_CA) != self.is_ca_backend(*id) {
            v.push(violation(
                "ca-steering",
                format!(
                    "{} VIP traffic sent to backend {id}, a {}",
                    if vip.kind == KIND_CA {
                        "CA"
                    } else {
                        "compiler"
                    },
                    if self.is_ca_backend(*id) {
                        "CA"
                    } else {
                        "compiler"
                    }
                ),
            ));
        }
        if let Some(want) = exp.backend
            && want != *id
        {
            v.push(violation(
                "backend",
                format!("sent to backend {id}, the table says {want}"),
            ));
        }
        v
    }
}

/// Check a reason-counter delta for one frame: exactly one counter moved,
/// by one, it is the model's reason, and its verdict is the action taken.
pub fn check_counters(exp: &Expected, action: u32, delta: &[u64]) -> Vec<Violation> {
    let mut v = Vec::new();
    let moved: Vec<(usize, u64)> = delta
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, d)| *d != 0)
        .collect();
    let label = |i: usize| Reason::from_code(i as u32).map_or("?", |r| r.label());
    match moved.as_slice() {
        [(i, 1)] => {
            if *i != exp.reason as usize {
                v.push(violation(
                    "reason",
                    format!(
                        "counted as {}, the model says {}",
                        label(*i),
                        exp.reason.label()
                    ),
                ));
            }
            if let Some(r) = Reason::from_code(*i as u32)
                && action_of(r) != action
            {
                v.push(violation(
                    "reason",
                    format!(
                        "counted as {} but the action was {}",
                        r.label(),
                        action_name(action)
                    ),
                ));
            }
        }
        other => {
            let list: Vec<String> = other
                .iter()
                .map(|(i, d)| format!("{}+{d}", label(*i)))
                .collect();
            v.push(violation(
                "counters",
                format!(
                    "not exactly one counter moved by one: [{}]",
                    list.join(", ")
                ),
            ));
        }
    }
    v
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_check_wants_exactly_the_model_reason_once() {
        let exp = Expected::of(Reason::PassNotVip);
        let mut d = vec![0u64; Reason::ALL.len()];
        assert_eq!(check_counters(&exp, XDP_PASS, &d)[0].kind, "counters");
        d[Reason::PassNotVip as usize] = 1;
        assert!(check_counters(&exp, XDP_PASS, &d).is_empty());
        assert_eq!(check_counters(&exp, XDP_DROP, &d)[0].kind, "reason");
        d[Reason::DropBadL3 as usize] = 1;
        assert_eq!(check_counters(&exp, XDP_PASS, &d)[0].kind, "counters");
        d[Reason::PassNotVip as usize] = 0;
        assert_eq!(check_counters(&exp, XDP_DROP, &d)[0].kind, "reason");
    }
}
