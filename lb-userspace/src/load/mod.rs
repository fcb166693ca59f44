//! Load-aware balancing of compiler services (issue 16): what a compiler
//! reports of its JRuby pool ([`status`]), how it is read ([`fetch`]), and
//! how weights for new flows follow from it ([`weights`]).

pub mod fetch;
pub mod status;
pub mod weights;

pub use fetch::{FetchError, LoadPoller};
pub use status::{JrubyMetrics, LoadSignal, StatusError};
pub use weights::{
    Balance, CompilerInput, Controller, ControllerConfig, EffectiveWeight, LoadInput, Plan, Role,
};
