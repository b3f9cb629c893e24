//! Training progress handed to an R function each epoch, and Ctrl-C detection between
//! minibatches. The R function (built by the package's R code) signals the progress condition and
//! draws the progress bar; it must not fail (errors it raises are ignored here).

use extendr_api::prelude::*;
use scvir_engine::train::{EpochRecord, TrainingObserver};

extern "C" {
    /// Defined in src/r_helpers.c: true when the user pressed Ctrl-C (checked without a longjmp).
    fn scvir_interrupt_pending() -> std::os::raw::c_int;
}

pub struct RObserver {
    progress: Option<Function>,
}

impl RObserver {
    /// `progress(epoch, max_epochs, elbo_train, elbo_validation)` after every epoch; `None`: silent.
    pub fn new(progress: Option<Function>) -> Self {
        RObserver { progress }
    }
}

impl TrainingObserver for RObserver {
    fn on_epoch_end(&mut self, r: &EpochRecord, max_epochs: usize) {
        let Some(f) = &self.progress else { return };
        let val = r.elbo_validation.unwrap_or(f64::NAN);
        let args = pairlist!((r.epoch + 1) as i32, max_epochs as i32, r.elbo_train, val);
        // The R side catches its own conditions; an R error here only loses one progress update.
        let _ = f.call(args);
    }

    fn interrupt_requested(&mut self) -> bool {
        unsafe { scvir_interrupt_pending() != 0 }
    }
}
