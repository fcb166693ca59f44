//! Load-aware balancing of compiler services (issue 16): what a compiler
//! reports of its JRuby pool ([`status`]), how it is read ([`fetch`]), and
//! how weights for new flows follow from it ([`weights`]).

pub mod fetch;
pub mod status;
pub mod weights;

use std::{collections::HashMap, net::IpAddr};

use crate::reconcile::{EffectiveBackend, HealthMap, MacMap};

pub use fetch::{FetchError, LoadPoller};
pub use status::{JrubyMetrics, LoadSignal, StatusError};
pub use weights::{
    Balance, CompilerInput, Controller, ControllerConfig, EffectiveWeight, LoadInput, Plan, Role,
};

/// The controller inputs of compiler service `service`, from what the
/// planner holds: its backends after the CLI overlay, the health map (a
/// backend not checked yet counts as up, as in the planner), the resolved
/// MACs (a backend without one is down, as in the data plane), and the load
/// read since the previous step (a compiler absent from `loads` was not
/// polled since: [`LoadInput::Unchanged`]).
pub fn compiler_inputs(
    service: &str,
    backends: &[EffectiveBackend],
    health: &HealthMap,
    macs: &MacMap,
    loads: &HashMap<IpAddr, LoadInput>,
) -> Vec<CompilerInput> {
    backends
        .iter()
        .map(|e| {
            let b = &e.backend;
            let checked = health.get(&(service.to_owned(), b.address)).copied();
            let has_mac = b.mac.is_some() || macs.contains_key(&b.address);
            CompilerInput {
                address: b.address,
                weight: b.weight,
                tier: b.tier,
                healthy: checked != Some(false) && has_mac,
                drained: e.drained,
                load: loads
                    .get(&b.address)
                    .copied()
                    .unwrap_or(LoadInput::Unchanged),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    #[test]
    fn inputs_from_planner_state() {
        let be = |n: u8, tier, drained| EffectiveBackend {
            backend: Backend {
                address: IpAddr::from([10, 0, 0, n]),
                name: None,
                weight: 10 * n as u32,
                mac: (n != 3).then_some([2, 0, 0, 0, 0, n]),
                tier,
            },
            drained,
            from_config: true,
        };
        let backends = [
            be(1, 0, false),
            be(2, 1, true),
            be(3, 0, false),
            be(4, 0, false),
        ];
        let mut health = HealthMap::new();
        health.insert(("c".into(), IpAddr::from([10, 0, 0, 4])), false);
        health.insert(("other".into(), IpAddr::from([10, 0, 0, 1])), false);
        let mut loads = HashMap::new();
        loads.insert(IpAddr::from([10, 0, 0, 1]), LoadInput::NoData);
        let inputs = compiler_inputs("c", &backends, &health, &MacMap::new(), &loads);
        let got: Vec<_> = inputs
            .iter()
            .map(|i| (i.weight, i.tier, i.healthy, i.drained, i.load))
            .collect();
        assert_eq!(
            got,
            [
                (10, 0, true, false, LoadInput::NoData),
                (20, 1, true, true, LoadInput::Unchanged),
                // No MAC yet: down.
                (30, 0, false, false, LoadInput::Unchanged),
                // Failing its check in this service.
                (40, 0, false, false, LoadInput::Unchanged),
            ]
        );
    }
}
