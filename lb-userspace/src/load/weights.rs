//! The weight controller: from each compiler's configured weight, health,
//! tier, warm-up and reported load, the weights the Maglev table should give
//! **new** flows. Established flows are never its business: the flow table
//! keeps them where they are whatever the weights say.
//!
//! It is pure and deterministic: time comes in as a number of milliseconds,
//! all arithmetic is on integers (permille), and the result depends only on
//! the sequence of inputs, not on their order within a step. Two load
//! balancers that read the same answers from the compilers compute the same
//! weights, and the coarse steps (quantization, hysteresis) make small
//! differences between their samples vanish.
//!
//! One [`Controller`] per compiler service. The planner calls
//! [`Controller::step`] on every load poll round and on every health, drain
//! or backend change, with one [`CompilerInput`] per backend, and builds the
//! table from [`EffectiveWeight::maglev_weight`].
//!
//! What it does, in order:
//!
//! 1. **Signals**: pressure = JRuby occupancy + waiting requests per
//!    instance ([`LoadSignal::pressure_permille`], 0..=2000), and service
//!    time = the average borrow time the compiler reports (how long a
//!    compile holds an instance), each smoothed by an EWMA
//!    (`smoothing_percent` of each new sample).
//! 2. **Load factor** (`balance = "load"` only): the lower of two factors,
//!    each rounded to [`QUANTUM_PERMILLE`] steps and bounded below by
//!    `min_weight_percent`:
//!    - *pressure*: up to [`PRESSURE_LOW`] a compiler keeps its full weight
//!      — spare JRuby instances mean no agent waits; from there to
//!      [`PRESSURE_HIGH`] (pool full and a quarter of it queued) the factor
//!      falls linearly to `min_weight_percent`, and stays there;
//!    - *slowness*: its borrow time over the reference, the lower median of
//!      the borrow times of the compilers serving new flows. Up to
//!      [`SLOWNESS_LOW`] (1.5x) full weight; from there to
//!      [`SLOWNESS_HIGH`] (3x) the factor falls linearly to
//!      `min_weight_percent`. An agent sent to a compiler whose compiles
//!      take 4x its peers' waits 4x longer even with no queue, and
//!      occupancy alone misses it: a slow compiler given little work is
//!      idle, its pressure factor rises, it gets more, and the weight
//!      chases itself. The borrow time does not depend on how much work
//!      the balancer gives a compiler (the server keeps its mean while
//!      idle), so this factor holds still.
//!
//!    A new factor is only taken if it differs from the current one by at
//!    least `hysteresis_percent`. No load data (no answer, an unparsable
//!    one) = factor 100%; no borrow timed yet = no slowness term.
//! 3. **Slow start**: a compiler that joins, or whose health check brings it
//!    back, starts at [`SLOW_START_INITIAL_PERMILLE`] of its weight and
//!    ramps linearly to 100% over `slow_start`, in quantum steps. Compilers
//!    already up at the controller's first step (a daemon restart) do not
//!    ramp: they are warm. An undrain does not ramp either: a drained
//!    compiler stays warm.
//! 4. **Rewrite limit**: changes that come from the controller itself (load
//!    factors, ramp steps) are applied at most `max_rewrites_per_minute`
//!    times in any 60 s; beyond that they wait. Changes that come from
//!    outside (health, drain, configured weight, tier) apply at once: the
//!    table must follow a dead compiler now.
//! 5. **Tiers**: new flows go to the lowest tier with at least `min_healthy`
//!    usable (healthy, not drained) compilers. If no tier has that many, the
//!    lowest tier with any usable compiler takes them: fewer compilers beat
//!    none. Compilers of the other tiers get weight 0 (like a drain: their
//!    established flows stay).

use std::{collections::BTreeMap, collections::VecDeque, net::IpAddr, time::Duration};

use super::status::LoadSignal;

/// Weight factors move in steps of 5% of the configured weight.
pub const QUANTUM_PERMILLE: u32 = 50;
/// Below this pressure (a quarter of the JRuby pool busy) a compiler keeps
/// its full weight.
pub const PRESSURE_LOW: u32 = 250;
/// At and above this pressure (pool full, a quarter of its size waiting) a
/// compiler is at `min_weight_percent`.
pub const PRESSURE_HIGH: u32 = 1250;
/// Up to this slowness (borrow time 1.5x its peers') a compiler keeps its
/// full weight: compile times differ by catalog, and that is not slowness.
pub const SLOWNESS_LOW: u32 = 1500;
/// At and above this slowness (3x its peers' borrow time) a compiler is at
/// `min_weight_percent`: every agent sent there waits 3x longer, queue or not.
pub const SLOWNESS_HIGH: u32 = 3000;
/// Share of its weight a slow-starting compiler starts with.
pub const SLOW_START_INITIAL_PERMILLE: u32 = 100;
/// The window of the rewrite limit.
pub const REWRITE_WINDOW_MS: u64 = 60_000;

/// How a compiler service weighs its compilers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Balance {
    /// Configured weights only (today's behaviour).
    #[default]
    Static,
    /// Configured weights scaled down by reported JRuby load.
    Load,
}

/// The controller's knobs (config keys of the same names; see the README).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    pub balance: Balance,
    /// Lowest effective weight under load, percent of the configured one.
    pub min_weight_percent: u32,
    /// Usable compilers a tier needs to take new flows.
    pub min_healthy: u32,
    /// Warm-up ramp after join or recovery; zero = off.
    pub slow_start: Duration,
    /// EWMA weight of each new load sample, percent.
    pub smoothing_percent: u32,
    /// Smallest change of the load factor that is acted on, percent.
    pub hysteresis_percent: u32,
    /// Controller-made table changes allowed per 60 s.
    pub max_rewrites_per_minute: u32,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            balance: Balance::Static,
            min_weight_percent: 25,
            min_healthy: 1,
            slow_start: Duration::ZERO,
            smoothing_percent: 30,
            hysteresis_percent: 10,
            max_rewrites_per_minute: 12,
        }
    }
}

/// What the planner knows of the load of one compiler at this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadInput {
    /// A new answer was read since the previous step.
    Sample(LoadSignal),
    /// No new answer since the previous step (the step is for a health or
    /// backend change): keep the smoothed signal as it is.
    Unchanged,
    /// The last poll got no usable answer: no load data.
    NoData,
}

/// One compiler, as the planner sees it at this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompilerInput {
    pub address: IpAddr,
    /// Configured weight (after CLI re-weights), 1..=1000.
    pub weight: u32,
    pub tier: u32,
    /// Its health check passes.
    pub healthy: bool,
    /// Drained by the operator.
    pub drained: bool,
    pub load: LoadInput,
}

/// Why a compiler gets no new flows, or that it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Takes new flows.
    Serving,
    /// Usable, but its tier is not the active one.
    Standby,
    /// Drained, down, or weight 0.
    Unusable,
}

/// The controller's answer for one compiler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveWeight {
    pub address: IpAddr,
    pub configured: u32,
    /// The Maglev weight for new flows, in thousandths of a configured-weight
    /// unit (so 25% of weight 1 is still representable); 0 = no new flows.
    pub maglev_weight: u32,
    pub role: Role,
    /// Current load factor, permille of the configured weight.
    pub load_permille: u32,
    /// Current slow-start share, permille (1000 = warm).
    pub ramp_permille: u32,
    /// The smoothed pressure behind the load factor; `None` = no load data.
    pub pressure_permille: Option<u32>,
    /// The smoothed average borrow time (compile time), ms; `None` = no
    /// load data or no borrow timed yet.
    pub borrow_ms: Option<u32>,
    /// That borrow time over the serving compilers' reference, permille
    /// (1000 = as fast as its peers, 4000 = 4x slower); `None` = no data.
    pub slowness_permille: Option<u32>,
}

impl EffectiveWeight {
    /// The effective weight in configured-weight units, for display.
    pub fn effective(&self) -> f64 {
        self.maglev_weight as f64 / 1000.0
    }
}

/// The weights of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// In the order of the inputs.
    pub weights: Vec<EffectiveWeight>,
    /// The tier taking new flows; `None` when no compiler is usable.
    pub active_tier: Option<u32>,
    /// Controller-made changes are waiting for the rewrite limit.
    pub held: bool,
}

#[derive(Clone, Debug)]
struct BackendState {
    pressure: Option<u32>,
    /// Smoothed average borrow time, ms.
    borrow: Option<u32>,
    load: u32,
    ramp: u32,
    ramp_start: Option<u64>,
    was_healthy: bool,
}

/// The weight controller of one compiler service.
#[derive(Clone, Debug)]
pub struct Controller {
    config: ControllerConfig,
    backends: BTreeMap<IpAddr, BackendState>,
    /// Times of the controller-made rewrites in the current window.
    rewrites: VecDeque<u64>,
    started: bool,
}

impl Controller {
    pub fn new(config: ControllerConfig) -> Self {
        Controller {
            config,
            backends: BTreeMap::new(),
            rewrites: VecDeque::new(),
            started: false,
        }
    }

    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Takes the inputs of this step (`now_ms`: a monotonic clock) and
    /// returns the weights for new flows. Backends missing from `inputs` are
    /// forgotten (a removed compiler that comes back ramps again).
    pub fn step(&mut self, now_ms: u64, inputs: &[CompilerInput]) -> Plan {
        let first = !self.started;
        self.started = true;
        self.backends
            .retain(|a, _| inputs.iter().any(|i| i.address == *a));
        // Tiers first: the slowness reference is taken among the compilers
        // that take new flows.
        let active_tier = active_tier(inputs, self.config.min_healthy);
        self.observe(now_ms, inputs, first);
        let reference = self.reference(inputs, active_tier);
        let targets = self.targets(now_ms, inputs, reference);
        let held = self.move_to(now_ms, &targets);
        Plan {
            weights: self.weights(inputs, active_tier, reference),
            active_tier,
            held,
        }
    }

    /// Each backend's smoothed signals and slow-start state, from this
    /// step's inputs.
    fn observe(&mut self, now_ms: u64, inputs: &[CompilerInput], first: bool) {
        let cfg = &self.config;
        let a = cfg.smoothing_percent.clamp(1, 100) as u64;
        for input in inputs {
            let st = self
                .backends
                .entry(input.address)
                .or_insert_with(|| BackendState {
                    pressure: None,
                    borrow: None,
                    load: 1000,
                    ramp: 1000,
                    ramp_start: None,
                    // At the first step everything up is warm; afterwards a
                    // newcomer is joining and ramps.
                    was_healthy: first && input.healthy,
                });
            if input.healthy && !st.was_healthy && !cfg.slow_start.is_zero() {
                st.ramp_start = Some(now_ms);
                st.ramp = SLOW_START_INITIAL_PERMILLE;
            } else if !input.healthy {
                st.ramp_start = None;
                st.ramp = 1000;
            }
            st.was_healthy = input.healthy;

            match input.load {
                LoadInput::Sample(s) => {
                    st.pressure = Some(ewma(a, s.pressure_permille().min(2000), st.pressure));
                    // An answer without a borrow time keeps the last one: the
                    // server only has none before its first timed borrow.
                    if let Some(ms) = s.borrow_ms {
                        st.borrow = Some(ewma(a, ms, st.borrow));
                    }
                }
                LoadInput::NoData => {
                    st.pressure = None;
                    st.borrow = None;
                }
                LoadInput::Unchanged => {}
            }
        }
    }

    /// The service time a compiler is compared with: the lower median of
    /// the serving compilers' (one that answers fast because it fails
    /// fast does not make its peers look slow; of two, the faster).
    fn reference(&self, inputs: &[CompilerInput], active_tier: Option<u32>) -> Option<u32> {
        let mut peers: Vec<u32> = inputs
            .iter()
            .filter(|i| usable(i) && Some(i.tier) == active_tier)
            .filter_map(|i| {
                let st = &self.backends[&i.address];
                st.pressure.and(st.borrow)
            })
            .collect();
        peers.sort_unstable();
        peers.get(peers.len().saturating_sub(1) / 2).copied()
    }

    /// Targets of each backend's controller-made factors: (load, ramp).
    fn targets(
        &self,
        now_ms: u64,
        inputs: &[CompilerInput],
        reference: Option<u32>,
    ) -> BTreeMap<IpAddr, (u32, u32)> {
        let cfg = &self.config;
        let mut targets: BTreeMap<IpAddr, (u32, u32)> = BTreeMap::new();
        for input in inputs {
            let st = &self.backends[&input.address];
            let load_target = match (cfg.balance, st.pressure) {
                (Balance::Load, Some(p)) => {
                    let slowness = slowness_permille(st.borrow, reference);
                    let t = load_factor(p, cfg.min_weight_percent)
                        .min(slowness_factor(slowness, cfg.min_weight_percent));
                    let hyst = cfg.hysteresis_percent * 10;
                    if t.abs_diff(st.load) >= hyst.max(1) {
                        t
                    } else {
                        st.load
                    }
                }
                // No data, or static: the configured weight, exactly.
                _ => 1000,
            };
            let ramp_target = match st.ramp_start {
                None => st.ramp,
                Some(start) => ramp_factor(now_ms.saturating_sub(start), cfg.slow_start),
            };
            targets.insert(input.address, (load_target, ramp_target));
        }
        targets
    }

    /// Moves every backend's factors to their targets, unless that change
    /// would pass the rewrite limit over controller-made changes; returns
    /// whether it was held.
    fn move_to(&mut self, now_ms: u64, targets: &BTreeMap<IpAddr, (u32, u32)>) -> bool {
        while self
            .rewrites
            .front()
            .is_some_and(|t| t.saturating_add(REWRITE_WINDOW_MS) <= now_ms)
        {
            self.rewrites.pop_front();
        }
        let changed = targets.iter().any(|(a, (l, r))| {
            let st = &self.backends[a];
            st.load != *l || st.ramp != *r
        });
        let held = changed && self.rewrites.len() >= self.config.max_rewrites_per_minute as usize;
        if changed && !held {
            self.rewrites.push_back(now_ms);
            for (a, (l, r)) in targets {
                let st = self.backends.get_mut(a).expect("inserted above");
                st.load = *l;
                st.ramp = *r;
                if *r == 1000 {
                    st.ramp_start = None;
                }
            }
        }
        held
    }

    /// Each compiler's role and Maglev weight, in the order of `inputs`.
    fn weights(
        &self,
        inputs: &[CompilerInput],
        active_tier: Option<u32>,
        reference: Option<u32>,
    ) -> Vec<EffectiveWeight> {
        inputs
            .iter()
            .map(|i| {
                let st = &self.backends[&i.address];
                let role = if !usable(i) {
                    Role::Unusable
                } else if Some(i.tier) == active_tier {
                    Role::Serving
                } else {
                    Role::Standby
                };
                let maglev_weight = match role {
                    Role::Serving => {
                        let w = i.weight as u64 * st.load as u64 * st.ramp as u64 / 1000;
                        (w as u32).max(1)
                    }
                    _ => 0,
                };
                EffectiveWeight {
                    address: i.address,
                    configured: i.weight,
                    maglev_weight,
                    role,
                    load_permille: st.load,
                    ramp_permille: st.ramp,
                    pressure_permille: st.pressure,
                    borrow_ms: st.pressure.and(st.borrow),
                    slowness_permille: st.pressure.and(slowness_permille(st.borrow, reference)),
                }
            })
            .collect()
    }
}

/// A compiler that may take new flows (in the active tier or not).
fn usable(i: &CompilerInput) -> bool {
    i.healthy && !i.drained && i.weight > 0
}

/// The first tier with at least `min_healthy` usable compilers, else the
/// first with any; `None` when no compiler is usable.
fn active_tier(inputs: &[CompilerInput], min_healthy: u32) -> Option<u32> {
    let mut per_tier: BTreeMap<u32, u32> = BTreeMap::new();
    for i in inputs.iter().filter(|i| usable(i)) {
        *per_tier.entry(i.tier).or_default() += 1;
    }
    per_tier
        .iter()
        .find(|(_, n)| **n >= min_healthy)
        .or_else(|| per_tier.iter().next())
        .map(|(t, _)| *t)
}

/// Exponential smoothing with `a` percent of the new value.
fn ewma(a: u64, new: u32, prev: Option<u32>) -> u32 {
    match prev {
        None => new,
        Some(prev) => ((a * new as u64 + (100 - a) * prev as u64 + 50) / 100) as u32,
    }
}

/// The load factor (permille) of a smoothed pressure, quantized and bounded.
pub fn load_factor(pressure: u32, min_weight_percent: u32) -> u32 {
    let min = (min_weight_percent * 10).clamp(1, 1000);
    if pressure <= PRESSURE_LOW {
        return 1000;
    }
    if pressure >= PRESSURE_HIGH {
        // Exactly the floor, even when it is not a multiple of the quantum.
        return min;
    }
    let raw = 1000 - (1000 - min) * (pressure - PRESSURE_LOW) / (PRESSURE_HIGH - PRESSURE_LOW);
    quantize(raw).clamp(min, 1000)
}

/// A borrow time over the reference borrow time, permille.
fn slowness_permille(borrow: Option<u32>, reference: Option<u32>) -> Option<u32> {
    let (b, r) = (borrow?, reference?);
    Some((b as u64 * 1000 / r.max(1) as u64).min(u32::MAX as u64) as u32)
}

/// The factor (permille) of a compiler's slowness (its borrow time over its
/// peers', permille; `None` = no data), quantized and bounded like
/// [`load_factor`].
pub fn slowness_factor(slowness: Option<u32>, min_weight_percent: u32) -> u32 {
    let Some(s) = slowness else { return 1000 };
    let min = (min_weight_percent * 10).clamp(1, 1000);
    if s <= SLOWNESS_LOW {
        return 1000;
    }
    if s >= SLOWNESS_HIGH {
        return min;
    }
    let raw = 1000 - (1000 - min) * (s - SLOWNESS_LOW) / (SLOWNESS_HIGH - SLOWNESS_LOW);
    quantize(raw).clamp(min, 1000)
}

/// The slow-start share (permille) `elapsed_ms` into a ramp of `slow_start`.
pub fn ramp_factor(elapsed_ms: u64, slow_start: Duration) -> u32 {
    let total = slow_start.as_millis() as u64;
    if elapsed_ms >= total {
        return 1000;
    }
    let span = (1000 - SLOW_START_INITIAL_PERMILLE) as u64;
    let raw = SLOW_START_INITIAL_PERMILLE as u64 + span * elapsed_ms / total;
    // Down to the quantum, never below the initial share.
    let q = raw as u32 / QUANTUM_PERMILLE * QUANTUM_PERMILLE;
    q.max(SLOW_START_INITIAL_PERMILLE)
}

fn quantize(permille: u32) -> u32 {
    (permille + QUANTUM_PERMILLE / 2) / QUANTUM_PERMILLE * QUANTUM_PERMILLE
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn addr(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
    }

    fn sig(occupancy: u32, queue: u32) -> LoadInput {
        LoadInput::Sample(LoadSignal {
            occupancy_permille: occupancy,
            queue_permille: queue,
            borrow_ms: None,
        })
    }

    /// A sample with an average borrow time.
    fn timed(occupancy: u32, queue: u32, borrow_ms: u32) -> LoadInput {
        LoadInput::Sample(LoadSignal {
            occupancy_permille: occupancy,
            queue_permille: queue,
            borrow_ms: Some(borrow_ms),
        })
    }

    fn input(n: u8, load: LoadInput) -> CompilerInput {
        CompilerInput {
            address: addr(n),
            weight: 100,
            tier: 0,
            healthy: true,
            drained: false,
            load,
        }
    }

    fn load_config() -> ControllerConfig {
        ControllerConfig {
            balance: Balance::Load,
            // No rewrite limit unless a test is about it.
            max_rewrites_per_minute: 1_000_000,
            ..ControllerConfig::default()
        }
    }

    fn weights(plan: &Plan) -> Vec<u32> {
        plan.weights.iter().map(|w| w.maglev_weight).collect()
    }

    #[test]
    fn load_factor_mapping() {
        assert_eq!(load_factor(0, 25), 1000);
        assert_eq!(load_factor(PRESSURE_LOW, 25), 1000);
        assert_eq!(load_factor(750, 25), 650); // halfway: 1000 - 750/2 = 625, rounds to 650
        assert_eq!(load_factor(PRESSURE_HIGH, 25), 250);
        assert_eq!(load_factor(2000, 25), 250);
        assert_eq!(load_factor(2000, 33), 330); // the bound wins over the quantum
        assert_eq!(load_factor(2000, 100), 1000);
        for p in 0..=2000 {
            assert_eq!(load_factor(p, 25) % QUANTUM_PERMILLE, 0);
            assert!(
                load_factor(p + 1, 25) <= load_factor(p, 25),
                "monotone at {p}"
            );
        }
    }

    #[test]
    fn static_balance_ignores_load() {
        let mut c = Controller::new(ControllerConfig::default());
        let plan = c.step(0, &[input(1, sig(1000, 1000)), input(2, sig(0, 0))]);
        assert_eq!(weights(&plan), [100_000, 100_000]);
        assert_eq!(plan.weights[0].pressure_permille, Some(2000));
    }

    #[test]
    fn a_busy_compiler_gets_less_and_stays_within_bounds() {
        let mut c = Controller::new(load_config());
        let mut plan = c.step(0, &[input(1, sig(1000, 1000)), input(2, sig(100, 0))]);
        for t in 1..50 {
            plan = c.step(
                t * 5000,
                &[input(1, sig(1000, 1000)), input(2, sig(100, 0))],
            );
        }
        // Floor: min_weight_percent (25%) of 100, in thousandths.
        assert_eq!(weights(&plan), [25_000, 100_000]);
        assert_eq!(plan.weights[0].load_permille, 250);
    }

    #[test]
    fn smoothing_damps_a_single_spike() {
        let mut c = Controller::new(load_config());
        for t in 0..10 {
            c.step(t * 5000, &[input(1, sig(100, 0))]);
        }
        // One saturated sample at 30% EWMA: pressure 100 -> 670, factor 700.
        let plan = c.step(50_000, &[input(1, sig(1000, 1000))]);
        assert_eq!(plan.weights[0].pressure_permille, Some(670));
        assert_eq!(plan.weights[0].load_permille, 700);
        // Unsmoothed it would have gone to the floor at once.
        let mut raw = Controller::new(ControllerConfig {
            smoothing_percent: 100,
            ..load_config()
        });
        raw.step(0, &[input(1, sig(100, 0))]);
        let plan = raw.step(5000, &[input(1, sig(1000, 1000))]);
        assert_eq!(plan.weights[0].load_permille, 250);
        // Sustained, the smoothed one gets there too.
        let mut plan = plan;
        for t in 11..30 {
            plan = c.step(t * 5000, &[input(1, sig(1000, 1000))]);
        }
        assert_eq!(plan.weights[0].load_permille, 250);
    }

    #[test]
    fn hysteresis_ignores_small_changes() {
        let mut c = Controller::new(ControllerConfig {
            smoothing_percent: 100,
            ..load_config()
        });
        let p = |occ| c.clone().step(0, &[input(1, sig(occ, 0))]).weights[0].load_permille;
        assert_eq!(p(750), 650);
        assert_eq!(p(800), 600);
        assert_eq!(p(900), 500);
        assert_eq!(p(850), 550);
        c.step(0, &[input(1, sig(750, 0))]);
        // 750 -> 800 moves the target by 50 permille (< 10%): ignored.
        let plan = c.step(5000, &[input(1, sig(800, 0))]);
        assert_eq!(plan.weights[0].load_permille, 650);
        assert!(!plan.held);
        // 750 -> 900 moves it by 150: taken.
        let plan = c.step(10_000, &[input(1, sig(900, 0))]);
        assert_eq!(plan.weights[0].load_permille, 500);
        // Back to 850 (target 550, diff 50): ignored again.
        let plan = c.step(15_000, &[input(1, sig(850, 0))]);
        assert_eq!(plan.weights[0].load_permille, 500);
    }

    #[test]
    fn rewrite_limit_holds_controller_changes_but_not_health() {
        let mut c = Controller::new(ControllerConfig {
            smoothing_percent: 100,
            max_rewrites_per_minute: 2,
            ..load_config()
        });
        let both = |a, b| [input(1, a), input(2, b)];
        c.step(0, &both(sig(0, 0), sig(0, 0)));
        // Two swings within the window are allowed...
        let p = c.step(1000, &both(sig(1000, 1000), sig(0, 0)));
        assert_eq!(weights(&p), [25_000, 100_000]);
        let p = c.step(2000, &both(sig(0, 0), sig(0, 0)));
        assert_eq!(weights(&p), [100_000, 100_000]);
        // ...the third waits.
        let p = c.step(3000, &both(sig(1000, 1000), sig(0, 0)));
        assert!(p.held);
        assert_eq!(weights(&p), [100_000, 100_000]);
        // A compiler going down is applied at once, even while held.
        let mut down = both(sig(1000, 1000), sig(0, 0));
        down[1].healthy = false;
        let p = c.step(4000, &down);
        assert!(p.held);
        assert_eq!(weights(&p), [100_000, 0]);
        // Once the first rewrite (t = 1000) leaves the window, the change goes in.
        let p = c.step(61_000, &both(sig(1000, 1000), sig(0, 0)));
        assert!(!p.held);
        assert_eq!(weights(&p), [25_000, 100_000]);
    }

    #[test]
    fn missing_data_means_configured_weight() {
        let mut c = Controller::new(ControllerConfig {
            smoothing_percent: 100,
            ..load_config()
        });
        let p = c.step(0, &[input(1, sig(1000, 1000))]);
        assert_eq!(weights(&p), [25_000]);
        // A step for another reason keeps the signal.
        let p = c.step(1000, &[input(1, LoadInput::Unchanged)]);
        assert_eq!(weights(&p), [25_000]);
        // A garbage answer is no data: the configured weight, exactly.
        let garbage = super::super::status::signal_of(b"<html>502</html>");
        assert_eq!(garbage, None);
        let p = c.step(2000, &[input(1, LoadInput::NoData)]);
        assert_eq!(weights(&p), [100_000]);
        assert_eq!(p.weights[0].pressure_permille, None);
        // A compiler that never answered is at its configured weight.
        let mut c = Controller::new(load_config());
        let p = c.step(
            0,
            &[input(1, LoadInput::NoData), input(2, LoadInput::Unchanged)],
        );
        assert_eq!(weights(&p), [100_000, 100_000]);
    }

    #[test]
    fn tiers_fail_over_and_back() {
        let mut c = Controller::new(ControllerConfig {
            min_healthy: 2,
            ..ControllerConfig::default()
        });
        let mut pool: Vec<CompilerInput> = (1..=4)
            .map(|n| CompilerInput {
                tier: if n <= 2 { 0 } else { 1 },
                ..input(n, LoadInput::NoData)
            })
            .collect();
        let p = c.step(0, &pool);
        assert_eq!(p.active_tier, Some(0));
        assert_eq!(weights(&p), [100_000, 100_000, 0, 0]);
        assert_eq!(p.weights[2].role, Role::Standby);
        // One tier-0 compiler down: below min_healthy, tier 1 takes new flows.
        pool[0].healthy = false;
        let p = c.step(1000, &pool);
        assert_eq!(p.active_tier, Some(1));
        assert_eq!(weights(&p), [0, 0, 100_000, 100_000]);
        assert_eq!(p.weights[0].role, Role::Unusable);
        assert_eq!(p.weights[1].role, Role::Standby);
        // A drain counts as not usable too.
        pool[0].healthy = true;
        pool[1].drained = true;
        assert_eq!(c.step(2000, &pool).active_tier, Some(1));
        // Back: new flows return to tier 0.
        pool[1].drained = false;
        let p = c.step(3000, &pool);
        assert_eq!(p.active_tier, Some(0));
        assert_eq!(weights(&p), [100_000, 100_000, 0, 0]);
        // No tier has two: the lowest with any usable one takes them.
        pool[1].healthy = false;
        pool[2].healthy = false;
        let p = c.step(4000, &pool);
        assert_eq!(p.active_tier, Some(0));
        assert_eq!(weights(&p), [100_000, 0, 0, 0]);
        for i in &mut pool {
            i.healthy = false;
        }
        assert_eq!(c.step(5000, &pool).active_tier, None);
    }

    #[test]
    fn slow_start_ramps_after_join_and_recovery_only() {
        let cfg = ControllerConfig {
            slow_start: Duration::from_secs(60),
            max_rewrites_per_minute: 1_000_000,
            ..ControllerConfig::default()
        };
        let mut c = Controller::new(cfg);
        // Up at the first step (daemon start): warm, no ramp.
        let p = c.step(0, &[input(1, LoadInput::NoData)]);
        assert_eq!(weights(&p), [100_000]);
        // A compiler that joins later ramps: 10% at once...
        let both = [input(1, LoadInput::NoData), input(2, LoadInput::NoData)];
        let p = c.step(10_000, &both);
        assert_eq!(weights(&p), [100_000, 10_000]);
        // ...linear, in 5% steps...
        let p = c.step(40_000, &both);
        assert_eq!(p.weights[1].ramp_permille, 550);
        let mut last = 0;
        for t in (10_000..=70_000).step_by(1000) {
            let w = c.step(t, &both).weights[1].maglev_weight;
            assert!(w >= last, "ramp goes down at {t}");
            last = w;
        }
        // ...full after slow_start.
        assert_eq!(last, 100_000);
        // Down and back: ramps again.
        let mut down = both;
        down[0].healthy = false;
        c.step(80_000, &down);
        let p = c.step(90_000, &both);
        assert_eq!(weights(&p), [10_000, 100_000]);
        // A drain and undrain does not.
        let mut drained = both;
        drained[1].drained = true;
        c.step(95_000, &drained);
        assert_eq!(c.step(96_000, &both).weights[1].maglev_weight, 100_000);
        assert_eq!(ramp_factor(0, Duration::from_secs(60)), 100);
        assert_eq!(ramp_factor(60_000, Duration::from_secs(60)), 1000);
    }

    #[test]
    fn slow_start_off_by_default() {
        let mut c = Controller::new(ControllerConfig::default());
        c.step(0, &[input(1, LoadInput::NoData)]);
        let p = c.step(
            1,
            &[input(1, LoadInput::NoData), input(2, LoadInput::NoData)],
        );
        assert_eq!(weights(&p), [100_000, 100_000]);
    }

    #[test]
    fn small_weights_keep_their_floor() {
        let mut c = Controller::new(ControllerConfig {
            smoothing_percent: 100,
            ..load_config()
        });
        let mut i = input(1, sig(1000, 1000));
        i.weight = 1;
        assert_eq!(weights(&c.step(0, &[i])), [250]);
    }

    #[test]
    fn slowness_factor_bounds_and_steps() {
        assert_eq!(slowness_factor(None, 25), 1000);
        assert_eq!(slowness_factor(Some(1000), 25), 1000);
        assert_eq!(slowness_factor(Some(SLOWNESS_LOW), 25), 1000);
        // Halfway (2.25x): 1000 - 750/2 = 625, rounds to 650.
        assert_eq!(slowness_factor(Some(2250), 25), 650);
        assert_eq!(slowness_factor(Some(SLOWNESS_HIGH), 25), 250);
        assert_eq!(slowness_factor(Some(4000), 1), 10);
        assert_eq!(slowness_factor(Some(u32::MAX), 33), 330);
        assert_eq!(slowness_factor(Some(u32::MAX), 100), 1000);
        for s in 0..=5000 {
            assert_eq!(slowness_factor(Some(s), 25) % QUANTUM_PERMILLE, 0);
            assert!(
                slowness_factor(Some(s + 1), 25) <= slowness_factor(Some(s), 25),
                "monotone at {s}"
            );
        }
    }

    /// The bench's pool in closed loop: c1 has 2 JRuby instances and
    /// compiles in 1000 ms, c2 and c3 have 4 and compile in 250 ms; 12
    /// catalog requests a second are shared by the weights of the previous
    /// step, and each compiler reports the occupancy they make (Little's
    /// law) and, if `timed`, its borrow time. Returns c1's load factor per
    /// 1 s step.
    fn closed_loop(cfg: &ControllerConfig, timed_borrow: bool, steps: u64) -> Vec<u32> {
        let pool = [(1u8, 2u32, 1000u32), (2, 4, 250), (3, 4, 250)];
        let mut c = Controller::new(cfg.clone());
        let mut weights = [1000u64; 3];
        let mut c1 = Vec::new();
        for t in 0..steps {
            let total: u64 = weights.iter().sum();
            let inputs: Vec<_> = pool
                .iter()
                .zip(weights)
                .map(|(&(n, jrubies, borrow), w)| {
                    // Requests a second x seconds per request / instances.
                    let busy = 12 * w * borrow as u64 / total / jrubies as u64;
                    let occupancy = busy.min(1000) as u32;
                    let queue = (busy.saturating_sub(1000) as u32).min(1000);
                    let load = if timed_borrow {
                        timed(occupancy, queue, borrow)
                    } else {
                        sig(occupancy, queue)
                    };
                    input(n, load)
                })
                .collect();
            let plan = c.step(t * 1000, &inputs);
            for (w, e) in weights.iter_mut().zip(&plan.weights) {
                *w = e.maglev_weight as u64;
            }
            c1.push(plan.weights[0].load_permille);
        }
        c1
    }

    #[test]
    fn a_stable_slow_compiler_goes_to_the_floor_and_stays_there() {
        let cfg = ControllerConfig {
            min_weight_percent: 1,
            smoothing_percent: 100,
            ..load_config()
        };
        let changes = |f: &[u32]| f.windows(2).filter(|w| w[0] != w[1]).count();
        // Occupancy alone chases itself: at the floor c1 is idle, so it
        // gets its weight back, is flooded, and goes back to the floor.
        let pressure_only = closed_loop(&cfg, false, 120);
        assert!(
            changes(&pressure_only[10..]) >= 10,
            "expected oscillation: {pressure_only:?}"
        );
        // With its borrow time, c1 (4x slower than the median) goes to the
        // floor and holds still, idle or not.
        let with_borrow = closed_loop(&cfg, true, 120);
        assert_eq!(with_borrow[1..], [10; 119], "{with_borrow:?}");
        // The same with the shipped defaults' smoothing and floor.
        let defaults = closed_loop(&load_config(), true, 120);
        assert!(defaults[5..].iter().all(|f| *f == 250), "{defaults:?}");
    }

    #[test]
    fn slowness_is_against_the_median_of_serving_compilers() {
        let mut c = Controller::new(ControllerConfig {
            smoothing_percent: 100,
            ..load_config()
        });
        // One compiler that answers fast (failing fast, say) does not make
        // its peers look slow: the reference is the lower median, 250.
        let p = c.step(
            0,
            &[
                input(1, timed(100, 0, 10)),
                input(2, timed(100, 0, 250)),
                input(3, timed(100, 0, 260)),
                input(4, timed(100, 0, 1000)),
            ],
        );
        assert_eq!(weights(&p), [100_000, 100_000, 100_000, 25_000]);
        assert_eq!(p.weights[3].slowness_permille, Some(4000));
        assert_eq!(p.weights[3].borrow_ms, Some(1000));
        assert_eq!(p.weights[0].slowness_permille, Some(40));
        // Of two, the faster is the reference.
        let mut c = Controller::new(load_config());
        let p = c.step(
            0,
            &[input(1, timed(0, 0, 1000)), input(2, timed(0, 0, 250))],
        );
        assert_eq!(weights(&p), [25_000, 100_000]);
        // A drained compiler is no reference: the slow one is alone, at
        // full weight.
        let mut c = Controller::new(load_config());
        let mut drained = input(2, timed(0, 0, 250));
        drained.drained = true;
        let p = c.step(0, &[input(1, timed(0, 0, 1000)), drained]);
        assert_eq!(weights(&p), [100_000, 0]);
        assert_eq!(p.weights[0].slowness_permille, Some(1000));
    }

    #[test]
    fn missing_borrow_time_means_pressure_only() {
        let mut c = Controller::new(ControllerConfig {
            smoothing_percent: 100,
            ..load_config()
        });
        let p = c.step(
            0,
            &[input(1, timed(0, 0, 1000)), input(2, timed(0, 0, 250))],
        );
        assert_eq!(weights(&p), [25_000, 100_000]);
        // An answer without a borrow time keeps the last one...
        let p = c.step(1000, &[input(1, sig(0, 0)), input(2, sig(0, 0))]);
        assert_eq!(weights(&p), [25_000, 100_000]);
        // ...no load data forgets it...
        let p = c.step(2000, &[input(1, LoadInput::NoData), input(2, sig(0, 0))]);
        assert_eq!(weights(&p), [100_000, 100_000]);
        assert_eq!(p.weights[0].borrow_ms, None);
        assert_eq!(p.weights[0].slowness_permille, None);
        // ...and a compiler that never timed a borrow has no slowness.
        let p = c.step(3000, &[input(1, sig(0, 0)), input(2, timed(0, 0, 250))]);
        assert_eq!(weights(&p), [100_000, 100_000]);
        assert_eq!(p.weights[0].slowness_permille, None);
        // Static balance shows the slowness but does not act on it.
        let mut s = Controller::new(ControllerConfig::default());
        let p = s.step(
            0,
            &[input(1, timed(0, 0, 1000)), input(2, timed(0, 0, 250))],
        );
        assert_eq!(weights(&p), [100_000, 100_000]);
        assert_eq!(p.weights[0].slowness_permille, Some(4000));
    }

    fn arb_load() -> impl Strategy<Value = LoadInput> {
        prop_oneof![
            (0u32..=1000, 0u32..=1000).prop_map(|(o, q)| sig(o, q)),
            (0u32..=1000, 0u32..=1000, 1u32..10_000).prop_map(|(o, q, b)| timed(o, q, b)),
            Just(LoadInput::NoData),
            Just(LoadInput::Unchanged),
        ]
    }

    /// Per step: time advance (ms) and per backend (load, healthy, tier).
    type Steps = Vec<(u64, Vec<(LoadInput, bool, u32)>)>;

    fn arb_steps() -> impl Strategy<Value = Steps> {
        proptest::collection::vec(
            (
                0u64..20_000,
                proptest::collection::vec((arb_load(), proptest::bool::weighted(0.9), 0u32..2), 4),
            ),
            1..60,
        )
    }

    fn run(cfg: &ControllerConfig, steps: &Steps) -> Vec<Plan> {
        let mut c = Controller::new(cfg.clone());
        let mut now = 0;
        steps
            .iter()
            .map(|(dt, backends)| {
                now += dt;
                let inputs: Vec<_> = backends
                    .iter()
                    .enumerate()
                    .map(|(n, (load, healthy, tier))| CompilerInput {
                        weight: 10 * (n as u32 + 1),
                        tier: *tier,
                        healthy: *healthy,
                        ..input(n as u8 + 1, *load)
                    })
                    .collect();
                c.step(now, &inputs)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn bounds_hold(steps in arb_steps(), min in 1u32..=100) {
            let cfg = ControllerConfig { min_weight_percent: min, ..load_config() };
            for plan in run(&cfg, &steps) {
                for w in &plan.weights {
                    if w.role == Role::Serving {
                        let full = w.configured * 1000;
                        prop_assert!(w.maglev_weight <= full);
                        // No slow start here, so only the load factor scales.
                        prop_assert!(w.maglev_weight >= w.configured * min * 10);
                        prop_assert!(w.load_permille >= min * 10 && w.load_permille <= 1000);
                    } else {
                        prop_assert_eq!(w.maglev_weight, 0);
                    }
                }
            }
        }

        #[test]
        fn rewrite_limit_holds(steps in arb_steps(), limit in 1u32..5) {
            let cfg = ControllerConfig {
                max_rewrites_per_minute: limit,
                smoothing_percent: 100,
                hysteresis_percent: 0,
                ..load_config()
            };
            let mut c = Controller::new(cfg);
            let mut now = 0u64;
            let mut changes: Vec<u64> = Vec::new();
            let mut last: Option<Vec<u32>> = None;
            for (dt, backends) in &steps {
                now += dt;
                // Health and tiers fixed: every change is controller-made.
                let inputs: Vec<_> = backends
                    .iter()
                    .enumerate()
                    .map(|(n, (load, _, _))| input(n as u8 + 1, *load))
                    .collect();
                let w = weights(&c.step(now, &inputs));
                if last.as_ref().is_some_and(|l| *l != w) {
                    changes.push(now);
                }
                last = Some(w);
            }
            for (i, t) in changes.iter().enumerate() {
                let in_window = changes[i..].iter().take_while(|u| **u < t + REWRITE_WINDOW_MS).count();
                prop_assert!(in_window as u32 <= limit, "{} changes within 60 s of {}", in_window, t);
            }
        }

        #[test]
        fn identical_inputs_identical_weights(steps in arb_steps()) {
            let cfg = ControllerConfig { slow_start: Duration::from_secs(30), ..load_config() };
            prop_assert_eq!(run(&cfg, &steps), run(&cfg, &steps));
            // The order of the inputs within a step does not matter either.
            let mut a = Controller::new(cfg.clone());
            let mut b = Controller::new(cfg);
            let mut now = 0;
            for (dt, backends) in &steps {
                now += dt;
                let inputs: Vec<_> = backends
                    .iter()
                    .enumerate()
                    .map(|(n, (load, healthy, tier))| CompilerInput {
                        tier: *tier,
                        healthy: *healthy,
                        ..input(n as u8 + 1, *load)
                    })
                    .collect();
                let mut reversed = inputs.clone();
                reversed.reverse();
                let pa = a.step(now, &inputs);
                let mut pb = b.step(now, &reversed);
                pb.weights.reverse();
                prop_assert_eq!(pa, pb);
            }
        }
    }
}
