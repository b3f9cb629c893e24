// Small R API helpers the Rust bridge calls during long computations.
#include <setjmp.h>
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

// One continuation token for the non-local exit an R callback started (R is single-threaded and
// callbacks do not nest).
static SEXP unwind_token = NULL;

struct call_data {
    SEXP fun;
    SEXP args;
};

static SEXP do_call(void *data) {
    struct call_data *d = (struct call_data *) data;
    SEXP call = PROTECT(Rf_lcons(d->fun, d->args));
    SEXP res = Rf_eval(call, R_GlobalEnv);
    UNPROTECT(1);
    return res;
}

static void jump_back(void *jb, Rboolean jump) {
    if (jump) longjmp(*(jmp_buf *) jb, 1);
}

// Calls fun(args...) with the calling R code's condition handlers and restarts in reach (unlike
// R_ToplevelExec, which hides them), so that progress conditions reach the user's handlers.
// Returns 0 when the call returned, 1 when R started a non-local exit out of it (an interrupt,
// an exiting handler or restart of the caller): the exit is stopped here, before it crosses the
// Rust frames below, and scvir_continue_unwind() resumes it once those frames have returned.
int scvir_call_with_handlers(SEXP fun, SEXP args) {
    jmp_buf jb;
    struct call_data d = {fun, args};
    if (unwind_token == NULL) {
        unwind_token = R_MakeUnwindCont();
        R_PreserveObject(unwind_token);
    }
    if (setjmp(jb)) return 1;
    R_UnwindProtect(do_call, &d, jump_back, &jb, unwind_token);
    return 0;
}

// Resumes the non-local exit stopped by scvir_call_with_handlers(); does not return.
void scvir_continue_unwind(void) {
    if (unwind_token != NULL) R_ContinueUnwind(unwind_token);
    Rf_error("scviR: no pending non-local exit to resume");
}
