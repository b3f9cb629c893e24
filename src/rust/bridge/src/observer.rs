//! Training progress printed to the R console, and Ctrl-C detection between minibatches.

use extendr_api::prelude::*;
use scvir_engine::train::{EpochRecord, TrainingObserver};

extern "C" {
    /// Defined in src/r_helpers.c: true when the user pressed Ctrl-C (checked without a longjmp).
    fn scvir_interrupt_pending() -> std::os::raw::c_int;
    fn scvir_flush_console();
}

pub struct RObserver {
    every: usize,
}

impl RObserver {
    /// Prints every `every` epochs (0: silent) and always the last epoch.
    pub fn new(every: usize) -> Self {
        RObserver { every }
    }
}

impl TrainingObserver for RObserver {
    fn on_epoch_end(&mut self, r: &EpochRecord, max_epochs: usize) {
        let e = r.epoch + 1;
        if self.every == 0 || (e % self.every != 0 && e != max_epochs && e != 1) {
            return;
        }
        let val = r.elbo_validation.map_or(String::new(), |v| format!(", elbo_validation {v:.2}"));
        rprintln!("Epoch {e}/{max_epochs}: elbo_train {:.2}{val}, kl_weight {:.3}", r.elbo_train, r.kl_weight);
        unsafe { scvir_flush_console() };
    }

    fn interrupt_requested(&mut self) -> bool {
        unsafe { scvir_interrupt_pending() != 0 }
    }
}
