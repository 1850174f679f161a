//! The `sampling` section: which executions are checked against the oracle, and the
//! strategy names it accepts (one name or a list).

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

/// The `sampling` section.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// `sampling.strategy` (default `random`): one name or a list of names.
    pub strategy: SamplingStrategies,
    /// `sampling.rate` (default 0.05, 0..=1): base sampling probability.
    pub rate: f64,
    /// `sampling.uncertainty_threshold` (default 0.7, 0..=1): confidence below which an
    /// execution is sampled by the `uncertainty` strategy.
    pub uncertainty_threshold: f64,
    /// `sampling.temporal_boost_rate` (default 0.5, 0..=1): extra rate right after a
    /// deployment, decaying with `temporal_half_life_sec`.
    pub temporal_boost_rate: f64,
    /// `sampling.temporal_half_life_sec` (default 3600, at least 1).
    pub temporal_half_life_sec: u64,
    /// `sampling.stratified_min_per_class` (default 10): per-class quota per hour for the
    /// `stratified` strategy.
    pub stratified_min_per_class: u32,
    /// `sampling.seed` (default none): makes sampling deterministic when set.
    pub seed: Option<u64>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            strategy: SamplingStrategies::from(SamplingStrategy::Random),
            rate: 0.05,
            uncertainty_threshold: 0.7,
            temporal_boost_rate: 0.5,
            temporal_half_life_sec: 3600,
            stratified_min_per_class: 10,
            seed: None,
        }
    }
}

/// One sampling strategy name.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplingStrategy {
    /// `random`: sample with probability `rate`.
    Random,
    /// `uncertainty`: sample executions whose confidence is below `uncertainty_threshold`.
    Uncertainty,
    /// `stratified`: guarantee `stratified_min_per_class` samples per output class and hour.
    Stratified,
    /// `temporal`: sample more right after a new program version is activated.
    Temporal,
}

impl SamplingStrategy {
    /// Every strategy, in bit order.
    pub const ALL: [SamplingStrategy; 4] = [
        SamplingStrategy::Random,
        SamplingStrategy::Uncertainty,
        SamplingStrategy::Stratified,
        SamplingStrategy::Temporal,
    ];

    /// The config name (`"random"`, `"uncertainty"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            SamplingStrategy::Random => "random",
            SamplingStrategy::Uncertainty => "uncertainty",
            SamplingStrategy::Stratified => "stratified",
            SamplingStrategy::Temporal => "temporal",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            SamplingStrategy::Random => 1,
            SamplingStrategy::Uncertainty => 2,
            SamplingStrategy::Stratified => 4,
            SamplingStrategy::Temporal => 8,
        }
    }
}

impl fmt::Display for SamplingStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`SamplingStrategy`] values (`sampling.strategy`).
///
/// In the file it is one name (`strategy: random`) or a list (`strategy: [random, temporal]`);
/// it serializes back as a name when it holds one strategy and as a list otherwise.
///
/// ```
/// use loopai_core::{SamplingStrategies, SamplingStrategy};
/// let set: SamplingStrategies = [SamplingStrategy::Random, SamplingStrategy::Temporal]
///     .into_iter()
///     .collect();
/// assert!(set.contains(SamplingStrategy::Temporal));
/// assert!(!set.contains(SamplingStrategy::Uncertainty));
/// assert_eq!(set.len(), 2);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SamplingStrategies(u8);

impl SamplingStrategies {
    /// The empty set (rejected by validation: a config needs at least one strategy).
    pub const fn empty() -> Self {
        SamplingStrategies(0)
    }

    /// Whether `strategy` is in the set.
    pub const fn contains(self, strategy: SamplingStrategy) -> bool {
        self.0 & strategy.bit() != 0
    }

    /// Adds `strategy` to the set.
    pub fn insert(&mut self, strategy: SamplingStrategy) {
        self.0 |= strategy.bit();
    }

    /// The number of strategies in the set.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The strategies in the set, in [`SamplingStrategy::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = SamplingStrategy> {
        SamplingStrategy::ALL
            .into_iter()
            .filter(move |s| self.contains(*s))
    }
}

impl From<SamplingStrategy> for SamplingStrategies {
    fn from(strategy: SamplingStrategy) -> Self {
        SamplingStrategies(strategy.bit())
    }
}

impl FromIterator<SamplingStrategy> for SamplingStrategies {
    fn from_iter<I: IntoIterator<Item = SamplingStrategy>>(iter: I) -> Self {
        let mut set = SamplingStrategies::empty();
        for s in iter {
            set.insert(s);
        }
        set
    }
}

impl fmt::Debug for SamplingStrategies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for SamplingStrategies {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut iter = self.iter();
        match (iter.next(), self.len()) {
            (Some(only), 1) => only.serialize(serializer),
            _ => {
                let mut seq = serializer.serialize_seq(Some(self.len()))?;
                for s in self.iter() {
                    seq.serialize_element(&s)?;
                }
                seq.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for SamplingStrategies {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct StrategiesVisitor;

        impl<'de> Visitor<'de> for StrategiesVisitor {
            type Value = SamplingStrategies;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sampling strategy name or a list of names")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
                let strategy = SamplingStrategy::deserialize(de::value::StrDeserializer::new(v))?;
                Ok(strategy.into())
            }

            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut set = SamplingStrategies::empty();
                while let Some(s) = seq.next_element::<SamplingStrategy>()? {
                    set.insert(s);
                }
                Ok(set)
            }
        }

        deserializer.deserialize_any(StrategiesVisitor)
    }
}
