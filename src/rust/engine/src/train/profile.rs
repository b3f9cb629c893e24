//! Where the time of the training steps goes, phase by phase, for a caller that asks
//! ([`TrainingObserver::profile_steps`](super::TrainingObserver::profile_steps)): the CLI's
//! `--profile`, which `bench/step_profile.sh` runs at 1 and 2 threads to show which phases a
//! second thread speeds up. Off, the loop reads no clock for it.

use std::time::Instant;

/// The phases of one optimisation step, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Forming the minibatch (dense rows, nonzeros, covariates) from the counts. In memory with
    /// more than one thread, only an epoch's first: the others are built during the step before
    /// them.
    Minibatch,
    /// Inference, generative pass and loss (the fused likelihood's gradient included). A step in
    /// closed form does its whole backward pass here and, with more than one thread, builds the
    /// next minibatch and updates the decoder heads beside its serial stretches
    /// (`module::vae::SideWork`).
    Forward,
    /// libtorch's backward pass (and beside it, with more than one thread, the next minibatch's
    /// building).
    Backward,
    /// Weight gradients finished by hand after backward (`sparse_input::finish_backward`): the
    /// sparse first layers and, with the engine's own products, the decoder heads.
    FinishBackward,
    /// The Adam update (of the parameters not already updated beside the step).
    Optimizer,
    /// The epoch's running sums of the loss terms.
    Bookkeeping,
}

impl Phase {
    pub const ALL: [Phase; 6] = [Phase::Minibatch, Phase::Forward, Phase::Backward, Phase::FinishBackward, Phase::Optimizer, Phase::Bookkeeping];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Minibatch => "minibatch",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::FinishBackward => "finish_backward",
            Phase::Optimizer => "optimizer",
            Phase::Bookkeeping => "bookkeeping",
        }
    }
}

/// Seconds spent in each phase over the training steps of a run.
#[derive(Clone, Debug, Default)]
pub struct StepProfile {
    pub seconds: [f64; 6],
    /// Optimisation steps (scANVI's labelled minibatches count within their step).
    pub steps: usize,
}

impl StepProfile {
    pub fn seconds_in(&self, phase: Phase) -> f64 {
        self.seconds[phase as usize]
    }
}

/// A clock that, when on, charges the time since its last mark to a phase.
pub(crate) struct PhaseClock {
    last: Option<Instant>,
    pub(crate) profile: StepProfile,
}

impl PhaseClock {
    pub(crate) fn new(on: bool) -> Self {
        PhaseClock { last: on.then(Instant::now), profile: StepProfile::default() }
    }

    /// Starts a new interval without charging the one that ended.
    pub(crate) fn restart(&mut self) {
        if self.last.is_some() {
            self.last = Some(Instant::now());
        }
    }

    /// Charges the time since the last mark to `phase`.
    pub(crate) fn mark(&mut self, phase: Phase) {
        if let Some(t) = self.last {
            let now = Instant::now();
            self.profile.seconds[phase as usize] += (now - t).as_secs_f64();
            self.last = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_that_is_off_charges_nothing() {
        let mut off = PhaseClock::new(false);
        off.mark(Phase::Forward);
        assert_eq!(off.profile.seconds, [0.0; 6]);
        let mut on = PhaseClock::new(true);
        std::thread::sleep(std::time::Duration::from_millis(2));
        on.mark(Phase::Backward);
        assert!(on.profile.seconds_in(Phase::Backward) >= 0.002);
        assert_eq!(on.profile.seconds_in(Phase::Forward), 0.0);
    }
}
