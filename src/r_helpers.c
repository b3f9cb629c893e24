// Small R API helpers the Rust bridge calls during long computations.
#include <R.h>
#include <Rinternals.h>
#include <R_ext/Utils.h>

static void check_interrupt(void *unused) {
    (void) unused;
    R_CheckUserInterrupt();
}

// True when the user pressed Ctrl-C. R_CheckUserInterrupt would longjmp through Rust frames;
// R_ToplevelExec contains that jump and reports it as a FALSE return instead.
int scvir_interrupt_pending(void) {
    return R_ToplevelExec(check_interrupt, NULL) == FALSE;
}

