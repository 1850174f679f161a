//! The canary of a task's later versions: a newly learnt program runs in shadow on the
//! calls whose upstream answer is known (forwarded calls and validations of local
//! answers), next to the running program, and is promoted when it agrees with the
//! upstream at least as often as the running program on the same calls, rolled back
//! otherwise.

use loopai_core::{Program, Result};
use serde::Serialize;
use serde_json::Value;

use crate::calibrate::{choose_threshold, margin};
use crate::calls::ProgramAnswer;

/// Calls with an upstream answer the candidate must be compared on before a verdict.
pub(crate) const CANARY_CALLS: u64 = 100;

/// A candidate version, run in shadow on the request path (microseconds, no I/O).
#[derive(Debug)]
pub(crate) struct Shadow {
    pub(crate) version: u32,
    pub(crate) program: Program,
}

impl Shadow {
    /// The candidate's answer on `input`, when it gives one.
    pub(crate) fn answer(&self, input: &Value) -> Option<ProgramAnswer> {
        let outcome = self.program.evaluate(input).ok()?;
        Some(ProgramAnswer {
            version: self.version,
            output: if outcome.abstained {
                Value::Null
            } else {
                outcome.output
            },
            confidence: outcome.confidence,
            margin: margin(outcome.scores.iter().copied()),
        })
    }
}

/// What the canary of a candidate has seen so far.
#[derive(Debug, Clone, Default)]
pub(crate) struct Canary {
    pub(crate) version: u32,
    /// The candidate's cross-fitted pairs; `None` until its learning pass has scored them
    /// (no verdict before).
    pub(crate) cross_fitted: Option<Vec<(f64, bool)>>,
    /// The candidate's `(confidence, agreed)` on the canary's calls (all after it was
    /// learnt: out of sample).
    pub(crate) shadow: Vec<(f64, bool)>,
    /// Canary calls: calls with an upstream label on which both programs ran.
    pub(crate) calls: u64,
    /// Of those, how many the candidate answered as the upstream did.
    pub(crate) candidate_agreed: u64,
    /// And how many the running program answered as the upstream did.
    pub(crate) running_agreed: u64,
    /// A verdict is queued on the calibrator.
    pub(crate) queued: bool,
    /// The last verdict asked for was to wait: ask again after another 32 calls (or when
    /// its cross-fitted pairs arrive).
    pub(crate) waited: bool,
}

/// What to do with a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not enough calls yet (or its pass is still cross-fitting).
    Wait,
    /// At least as good as the running program on the canary's calls.
    Promote,
    /// Worse: discard it (it stays installed, inactive).
    RollBack,
}

impl Canary {
    pub(crate) fn new(version: u32) -> Canary {
        Canary {
            version,
            ..Canary::default()
        }
    }

    /// Counts a canary call: the candidate's and the running program's answers against
    /// the upstream's `label`.
    pub(crate) fn observe(
        &mut self,
        candidate: &ProgramAnswer,
        running: Option<&ProgramAnswer>,
        label: &str,
    ) {
        let agreed = candidate.output.as_str() == Some(label);
        self.shadow.push((candidate.score(), agreed));
        self.calls += 1;
        self.candidate_agreed += u64::from(agreed);
        self.running_agreed += u64::from(running.is_some_and(|p| p.output.as_str() == Some(label)));
    }

    /// The verdict: after [`CANARY_CALLS`] calls, rolled back when it agreed with the
    /// upstream less often than the running program; else promoted once it can answer
    /// within `budget` as a version — its pairs so far (cross-fitted and on the canary's
    /// calls) give a threshold — or at once when the running program (`running_serves`
    /// false) answers nothing locally either. A promotion never turns a task that serves
    /// back to forwarding everything.
    pub(crate) fn verdict(&self, running_serves: bool, budget: f64) -> Verdict {
        if self.calls < CANARY_CALLS {
            Verdict::Wait
        } else if self.candidate_agreed < self.running_agreed {
            Verdict::RollBack
        } else if !running_serves || choose_threshold(&self.pairs(), budget).threshold.is_some() {
            Verdict::Promote
        } else {
            Verdict::Wait
        }
    }

    /// The candidate's pairs so far: cross-fitted, then on the canary's calls.
    fn pairs(&self) -> Vec<(f64, bool)> {
        let mut pairs = self.cross_fitted.clone().unwrap_or_default();
        pairs.extend_from_slice(&self.shadow);
        pairs
    }

    /// Whether a verdict should be asked for now (cheap; on the request path): enough
    /// calls, and either no verdict was asked for since the candidate's last news (its
    /// 100th call, its cross-fitted pairs) or another 32 calls came in.
    pub(crate) fn due(&self) -> bool {
        !self.queued
            && self.calls >= CANARY_CALLS
            && (!self.waited || (self.calls - CANARY_CALLS) % 32 == 0)
    }

    /// The pairs a promoted candidate starts its calibration with.
    pub(crate) fn into_pairs(self) -> Vec<(f64, bool)> {
        let mut pairs = self.cross_fitted.unwrap_or_default();
        pairs.extend(self.shadow);
        pairs
    }

    pub(crate) fn status(&self) -> CanaryStatus {
        CanaryStatus {
            version: self.version,
            cross_fitted: self.cross_fitted.is_some(),
            calls: self.calls,
            candidate_agreed: self.candidate_agreed,
            running_agreed: self.running_agreed,
        }
    }
}

/// A candidate version in canary (see `docs/gateway.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CanaryStatus {
    /// The candidate's version (installed, not active).
    pub version: u32,
    /// Whether its learning pass has scored its cross-fitted pairs.
    pub cross_fitted: bool,
    /// Calls with an upstream answer on which it ran next to the running program.
    pub calls: u64,
    /// Of those, how many it answered as the upstream did.
    pub candidate_agreed: u64,
    /// And how many the running program answered as the upstream did.
    pub running_agreed: u64,
}

/// The outcome of the last canary of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct CanaryOutcome {
    /// The candidate's version.
    pub version: u32,
    /// Whether it was promoted (else rolled back).
    pub promoted: bool,
    /// Canary calls it was judged on.
    pub calls: u64,
    /// Of those, how many it answered as the upstream did.
    pub candidate_agreed: u64,
    /// And how many the running program answered as the upstream did.
    pub running_agreed: u64,
}

/// Compiles a candidate's program for the shadow.
pub(crate) fn shadow_of(version: u32, program_json: &[u8]) -> Result<Shadow> {
    Ok(Shadow {
        version,
        program: Program::from_json(program_json)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(label: &str, confidence: f64) -> ProgramAnswer {
        ProgramAnswer {
            version: 2,
            output: Value::String(label.into()),
            confidence,
            margin: None,
        }
    }

    #[test]
    fn a_candidate_is_judged_on_enough_calls_after_its_cross_fitting() {
        let mut c = Canary::new(2);
        for i in 0..CANARY_CALLS {
            // The candidate is right on every call, the running program on every other.
            let running = answer(if i % 2 == 0 { "spam" } else { "ham" }, 0.9);
            c.observe(&answer("spam", 0.8), Some(&running), "spam");
        }
        // Not cross-fitted yet, and 100 agreeing pairs are not enough for a 2% bound
        // (149 are): it waits while the running program serves...
        assert!(c.due());
        assert_eq!(c.verdict(true, 0.02), Verdict::Wait);
        // ...not when the running program answers nothing locally, nor at a 5% budget.
        assert_eq!(c.verdict(false, 0.02), Verdict::Promote);
        assert_eq!(c.verdict(true, 0.05), Verdict::Promote);
        // One cross-fitted pair more is still not enough while the running program
        // serves: promoting it would forward everything until more pairs came in.
        c.cross_fitted = Some(vec![(0.7, true)]);
        assert_eq!(c.verdict(true, 0.02), Verdict::Wait);
        assert_eq!((c.candidate_agreed, c.running_agreed), (100, 50));
        let pairs = c.clone().into_pairs();
        assert_eq!(pairs.len(), 101);
        assert_eq!(pairs[0], (0.7, true));
        // After a wait it is asked again 32 calls later, not on every call...
        c.waited = true;
        for k in 1..=32 {
            c.observe(&answer("spam", 0.8), None, "spam");
            assert_eq!(c.due(), k == 32, "{k}");
        }
        // ...or as soon as its cross-fitting is done: with enough pairs for a threshold,
        // promoted.
        c.cross_fitted = Some(vec![(0.7, true); 200]);
        c.waited = false;
        c.observe(&answer("spam", 0.8), None, "spam");
        assert!(c.due());
        assert_eq!(c.verdict(true, 0.02), Verdict::Promote);
    }

    #[test]
    fn a_promotion_never_leaves_a_serving_task_without_a_threshold() {
        let mut c = Canary::new(4);
        for _ in 0..CANARY_CALLS {
            c.observe(&answer("spam", 0.8), Some(&answer("spam", 0.9)), "spam");
        }
        // 400 cross-fitted pairs, but its most confident ones disagree: no threshold
        // qualifies, so the running program keeps serving...
        let mut cross: Vec<(f64, bool)> = (0..5).map(|_| (0.99, false)).collect();
        cross.extend((0..395).map(|i| (0.5 + f64::from(i) / 1000.0, true)));
        c.cross_fitted = Some(cross);
        assert_eq!(c.verdict(true, 0.02), Verdict::Wait);
        // ...unless it serves nothing either.
        assert_eq!(c.verdict(false, 0.02), Verdict::Promote);
    }

    #[test]
    fn the_canary_calibrates_a_candidate_on_its_margins() {
        let mut c = Canary::new(2);
        let mut sure = answer("fr", 0.6);
        sure.margin = Some(0.55);
        let mut doubtful = answer("fr", 0.6);
        doubtful.margin = Some(0.05);
        c.observe(&sure, None, "fr");
        c.observe(&doubtful, None, "it");
        assert_eq!(c.shadow, vec![(0.55, true), (0.05, false)]);
    }

    #[test]
    fn a_worse_candidate_is_rolled_back() {
        let mut c = Canary::new(3);
        c.cross_fitted = Some(Vec::new());
        for i in 0..CANARY_CALLS - 1 {
            let cand = answer(if i % 10 == 0 { "ham" } else { "spam" }, 0.8);
            c.observe(&cand, Some(&answer("spam", 0.9)), "spam");
        }
        assert_eq!(c.verdict(true, 0.02), Verdict::Wait, "one call short");
        assert!(!c.due());
        c.observe(&answer("spam", 0.8), None, "spam");
        assert_eq!(c.verdict(true, 0.02), Verdict::RollBack);
        assert_eq!(c.verdict(false, 0.5), Verdict::RollBack);
        assert_eq!(c.status().calls, CANARY_CALLS);
    }
}
