//! Training progress handed to an R function each epoch, and Ctrl-C detection between
//! minibatches.
//!
//! The R function is called with the caller's condition handlers in reach (so that progress
//! conditions reach `suppressMessages()`, knitr and the user's handlers). When it starts a
//! non-local exit out of the call (an interrupt, an exiting handler such as
//! `tryCatch(message = )`), the C helper stops the exit before it crosses Rust frames; training
//! then stops, everything is dropped, and the bridge returns the "[scviR:unwind]" error on which
//! the R side resumes the exit (`scvir_continue_unwind`).

use extendr_api::prelude::*;
use scvir_engine::train::{EpochRecord, TrainingObserver};
use std::os::raw::{c_int, c_void};

extern "C" {
    /// Defined in src/r_helpers.c: true when the user pressed Ctrl-C (checked without a longjmp).
    fn scvir_interrupt_pending() -> c_int;
    /// Defined in src/r_helpers.c: calls fun(args) with the caller's handlers; 1 on a stopped
    /// non-local exit.
    fn scvir_call_with_handlers(fun: *mut c_void, args: *mut c_void) -> c_int;
}

/// Ctrl-C (or an R time limit) pending, for the engine's queries and DE.
pub fn r_interrupt_pending() -> bool {
    unsafe { scvir_interrupt_pending() != 0 }
}

pub struct RObserver {
    progress: Option<Function>,
    /// An R callback started a non-local exit; the R side resumes it after the call returns.
    pub unwind_pending: bool,
}

impl RObserver {
    /// `progress(epoch, max_epochs, elbo_train, elbo_validation)` after every epoch; `None`: silent.
    pub fn new(progress: Option<Function>) -> Self {
        RObserver { progress, unwind_pending: false }
    }
}

impl TrainingObserver for RObserver {
    fn on_epoch_end(&mut self, r: &EpochRecord, max_epochs: usize) {
        let Some(f) = &self.progress else { return };
        if self.unwind_pending {
            return;
        }
        let val = r.elbo_validation.unwrap_or(f64::NAN);
        let args = pairlist!((r.epoch + 1) as i32, max_epochs as i32, r.elbo_train, val);
        let jumped = unsafe { scvir_call_with_handlers(f.get() as *mut c_void, args.get() as *mut c_void) };
        self.unwind_pending = jumped != 0;
    }

    fn interrupt_requested(&mut self) -> bool {
        self.unwind_pending || unsafe { scvir_interrupt_pending() != 0 }
    }
}
