//! Process-level settings that matter for speed, scoped to one engine call.
//!
//! The engine runs inside a host process (R) that owns its floating-point environment, its BLAS
//! and OpenMP thread counts and its allocator. [`Session::enter`] changes what training and
//! inference need and the returned guard puts everything back when it is dropped, on success, on
//! error and on unwinding alike:
//! - x86 flush-to-zero / denormals-are-zero (as `torch.set_flush_denormal(True)`), on the calling
//!   thread and on the OpenMP worker threads libtorch (and an OpenMP BLAS) compute on;
//! - libtorch's intra-op threads, OpenMP's default team size and OpenBLAS's thread count;
//! - optionally, OpenBLAS's kernel selection (when it fell back to generic kernels on this CPU)
//!   and glibc's allocator thresholds; both are opt-in.
//!
//! In a child created by `fork()` after the parent ran multi-threaded, GNU OpenMP's thread pool
//! is unusable (its threads do not exist in the child) and the first parallel region hangs.
//! [`install_fork_handler`] registers a `pthread_atfork` handler that drops OpenMP and OpenBLAS
//! to one thread in the child, and sessions entered in a forked child run on one thread.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::cell::Cell;
use std::sync::{Mutex, Once};

/// What a session may change, and to what.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionOptions {
    /// Threads for libtorch, OpenMP and OpenBLAS during the call; `None` keeps the current ones.
    pub n_threads: Option<usize>,
    /// Re-select OpenBLAS's kernels for this CPU during the call when it fell back to generic ones.
    pub tune_blas: bool,
    /// Raise glibc's mmap / trim thresholds during the call (fewer page faults per minibatch).
    pub tune_allocator: bool,
    /// Polled by queries and DE between minibatches (on the calling thread); true stops them
    /// with `Error::Cancelled`.
    pub interrupt: Option<fn() -> bool>,
}

static INTERRUPT_CHECK: std::sync::Mutex<Option<fn() -> bool>> = std::sync::Mutex::new(None);
/// Set once the check fired in this session: the host's pending interrupt is consumed when it is
/// seen, so the cancellation must stick until the session ends.
static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Whether the session's interrupt check fired (now or earlier in this session). Call it from
/// the thread that entered the session only.
pub fn cancelled() -> bool {
    if CANCELLED.load(Ordering::Relaxed) {
        return true;
    }
    let f = *INTERRUPT_CHECK.lock().unwrap_or_else(|e| e.into_inner());
    let fired = f.map_or(false, |f| f());
    if fired {
        CANCELLED.store(true, Ordering::Relaxed);
    }
    fired
}

/// Err(Cancelled) when [`cancelled`].
pub fn check_interrupt() -> crate::Result<()> {
    if cancelled() {
        Err(crate::Error::Cancelled)
    } else {
        Ok(())
    }
}

/// Restores the process settings it changed when dropped. Not `Send`: it must be dropped on the
/// thread that entered it.
pub struct Session {
    mxcsr: Option<u32>,
    team: c_int,
    torch_threads: Option<i32>,
    omp_threads: Option<c_int>,
    openblas_threads: Option<c_int>,
    blas_retuned: bool,
    allocator_tuned: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

/// The process that loaded the engine; a different pid means we run in a forked child.
static PARENT_PID: AtomicI32 = AtomicI32::new(0);

impl Session {
    pub fn enter(opts: SessionOptions) -> Session {
        install_fork_handler();
        *INTERRUPT_CHECK.lock().unwrap_or_else(|e| e.into_inner()) = opts.interrupt;
        CANCELLED.store(false, Ordering::Relaxed);
        let mut s = Session {
            mxcsr: None,
            team: 0,
            torch_threads: None,
            omp_threads: None,
            openblas_threads: None,
            blas_retuned: false,
            allocator_tuned: false,
            _not_send: std::marker::PhantomData,
        };
        let n_threads = if in_forked_child() { Some(1) } else { opts.n_threads.filter(|&n| n > 0) };
        if let Some(n) = n_threads {
            s.omp_threads = omp_get_max_threads();
            s.openblas_threads = openblas_get_num_threads();
            s.torch_threads = Some(tch::get_num_threads());
            tch::set_num_threads(n as i32);
            openblas_set_num_threads(n as c_int);
            omp_set_num_threads(n as c_int);
        }
        if opts.tune_blas {
            s.blas_retuned = retune_openblas();
        }
        if opts.tune_allocator {
            s.allocator_tuned = set_allocator_thresholds(true);
        }
        s.mxcsr = read_mxcsr();
        if let Some(old) = s.mxcsr {
            let ftz = old | FTZ_DAZ;
            write_mxcsr(ftz);
            s.team = omp_get_max_threads().unwrap_or(0);
            omp_broadcast_mxcsr(ftz, s.team);
        }
        s
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        *INTERRUPT_CHECK.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if self.allocator_tuned {
            set_allocator_thresholds(false);
        }
        if self.blas_retuned {
            restore_openblas();
        }
        if let Some(t) = self.torch_threads {
            tch::set_num_threads(t);
        }
        if let Some(t) = self.openblas_threads {
            openblas_set_num_threads(t);
        }
        // Last: libtorch and OpenBLAS both set OpenMP's default team size.
        if let Some(t) = self.omp_threads {
            omp_set_num_threads(t);
        }
        if let Some(old) = self.mxcsr {
            // Every worker this session may have started, whatever the restored team size.
            let team = self.team.max(omp_get_max_threads().unwrap_or(0));
            omp_broadcast_mxcsr(old, team);
            write_mxcsr(old);
        }
    }
}

/// The number of CPUs this process may use: `OMP_NUM_THREADS` when set, else the CPU affinity
/// mask and cgroup quota (Rust's `available_parallelism`), bounded by SLURM's
/// `SLURM_CPUS_PER_TASK` when set.
pub fn available_cores() -> usize {
    let env_count = |k: &str| std::env::var(k).ok().and_then(|v| v.split(',').next()?.trim().parse::<usize>().ok()).filter(|&n| n > 0);
    let hw = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut n = env_count("OMP_NUM_THREADS").unwrap_or(hw);
    if let Some(slurm) = env_count("SLURM_CPUS_PER_TASK") {
        n = n.min(slurm);
    }
    n.max(1)
}

/// The process settings a session changes, as they are now (for tests and diagnostics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessState {
    pub mxcsr: Option<u32>,
    pub omp_max_threads: Option<i32>,
    pub openblas_threads: Option<i32>,
    pub openblas_core: Option<String>,
    pub torch_threads: i32,
}

pub fn process_state() -> ProcessState {
    ProcessState {
        mxcsr: read_mxcsr(),
        omp_max_threads: omp_get_max_threads(),
        openblas_threads: openblas_get_num_threads(),
        openblas_core: openblas_core(),
        torch_threads: tch::get_num_threads(),
    }
}

/// Memory the system can give this process now (Linux's MemAvailable), if known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses, before anything is allocated, a computation whose result needs more memory than is
/// available: `values` numbers of `bytes_each` bytes (the engine's f32 copy plus R's f64 one).
pub fn ensure_memory(values: u128, bytes_each: u128, what: &str) -> crate::Result<()> {
    let need = values.saturating_mul(bytes_each);
    let fits_usize = usize::try_from(values).is_ok();
    let available = available_memory().map(u128::from);
    if !fits_usize || available.is_some_and(|a| need > a) {
        let gb = |b: u128| b as f64 / 1e9;
        return Err(crate::Error::Resource(format!(
            "{what} would need about {:.1} GB{}; ask for fewer samples, cells or genes (or return the mean)",
            gb(need),
            available.map_or(String::new(), |a| format!(", but only {:.1} GB of memory is available", gb(a)))
        )));
    }
    Ok(())
}

pub fn cuda_available() -> bool {
    tch::Cuda::is_available()
}

/// What the loaded libtorch offers for GPUs: whether it carries CUDA (its CUDA libraries were
/// loaded beside it), and how many CUDA devices it sees (0 without a driver or a GPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaState {
    pub built: bool,
    pub devices: i64,
}

pub fn cuda_state() -> CudaState {
    let built = tch::utils::has_cudart();
    CudaState { built, devices: if built { tch::Cuda::device_count().max(0) } else { 0 } }
}

/// Why `accelerator = "gpu"` cannot run here, with what to do; None when a CUDA device is there.
pub fn gpu_unavailable_reason() -> Option<String> {
    let state = cuda_state();
    if state.devices > 0 && cuda_available() {
        return None;
    }
    Some(if state.built {
        "the libtorch scviR loaded has CUDA and sees no CUDA device (check `nvidia-smi`, the \
         NVIDIA driver and CUDA_VISIBLE_DEVICES)"
            .into()
    } else {
        "the libtorch scviR loaded is the CPU build; install the CUDA build with \
         `SCVIR_CUDA=1 make install` or `scviR::install_libtorch(cuda = TRUE)` on a machine with an NVIDIA GPU"
            .into()
    })
}

/// Seeds libtorch's generator (initial weights, dropout, posterior samples). Call it before
/// building a model so that the initial weights are repeatable too; training seeds again.
pub fn seed_everything(seed: u64) {
    tch::manual_seed(seed as i64);
}

/// Whether this process is a `fork()` child of the one that first used the engine.
pub fn in_forked_child() -> bool {
    let parent = PARENT_PID.load(Ordering::Relaxed);
    parent != 0 && parent != std::process::id() as i32
}

/// Registers (once per process) the `pthread_atfork` child handler described in the module doc.
pub fn install_fork_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        PARENT_PID.store(std::process::id() as i32, Ordering::Relaxed);
        extern "C" fn in_child() {
            omp_set_num_threads(1);
            openblas_set_num_threads(1);
        }
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
}

// --- floating-point control ----------------------------------------------------------------------

const FTZ_DAZ: u32 = 0x8040;

#[cfg(target_arch = "x86_64")]
#[allow(deprecated)]
fn read_mxcsr() -> Option<u32> {
    Some(unsafe { std::arch::x86_64::_mm_getcsr() })
}

#[cfg(target_arch = "x86_64")]
#[allow(deprecated)]
fn write_mxcsr(v: u32) {
    unsafe { std::arch::x86_64::_mm_setcsr(v) }
}

#[cfg(not(target_arch = "x86_64"))]
fn read_mxcsr() -> Option<u32> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn write_mxcsr(_: u32) {}

/// Sets the MXCSR of every thread of OpenMP's current team (the worker threads libtorch and an
/// OpenMP BLAS compute on) by running one parallel region through libgomp's entry point.
fn omp_broadcast_mxcsr(value: u32, team: c_int) {
    type Parallel = extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
    extern "C" fn set(data: *mut c_void) {
        write_mxcsr(unsafe { *(data as *const u32) });
    }
    let f = symbol("GOMP_parallel");
    if f.is_null() || in_forked_child() {
        return;
    }
    let mut v = value;
    let parallel: Parallel = unsafe { std::mem::transmute(f) };
    parallel(set, &mut v as *mut u32 as *mut c_void, team.max(1) as c_uint, 0);
}

/// How many parts [`parallel_parts`] should cut `units` independent units of work into: one per
/// thread, at most one per unit. (Two per thread, taken as threads come free, made the training
/// step about 5% slower at 2 threads on the project's test machine, each part packing its
/// operands again, and gained nothing in its slow periods, where both threads slow down.)
/// Inside [`beside`]'s `there`, four per thread, so that the caller of `beside` can take some
/// once its own work is done. Callers still decide what a unit is and when work is too small to
/// split.
pub fn parts_for(units: usize) -> usize {
    let per_thread = if SHARING.with(Cell::get) != 0 { 4 } else { 1 };
    (tch::get_num_threads().max(1) as usize * per_thread).min(units).max(1)
}

/// One parallel region's parts, taken in turn by the threads that work on it.
struct Region<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    parts: usize,
    next: AtomicUsize,
    panicked: AtomicBool,
    /// Threads other than its owner working on it (published regions, see [`beside`]).
    helpers: AtomicUsize,
}

impl Region<'_> {
    fn new(f: &(dyn Fn(usize) + Sync), parts: usize) -> Region<'_> {
        Region { f, parts, next: AtomicUsize::new(0), panicked: AtomicBool::new(false), helpers: AtomicUsize::new(0) }
    }

    /// Takes the next part not yet taken until none is left.
    fn work(&self) {
        loop {
            let part = self.next.fetch_add(1, Ordering::Relaxed);
            if part >= self.parts {
                break;
            }
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.f)(part))).is_err() {
                self.panicked.store(true, Ordering::SeqCst);
            }
        }
    }

    fn raise(&self) {
        if self.panicked.load(Ordering::SeqCst) {
            panic!("a parallel part of a CPU kernel panicked");
        }
    }
}

/// Runs `f(part)` for every part in `0..parts` on the threads libtorch computes on (one OpenMP
/// parallel region through libgomp's entry point, so no second pool competes with libtorch's
/// spinning workers), or in order on this thread when there is one part, one thread, no OpenMP,
/// or a forked child. Each thread takes the next part not yet taken until none is left, so the
/// parts need not be as many as the threads nor equally fast. Inside [`beside`]'s `there` the
/// parts run on this thread and on `beside`'s caller once it is free. A panic in a part is
/// re-raised here after the region ends.
pub fn parallel_parts(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let shared = SHARING.with(Cell::get);
    if parts > 1 && shared != 0 {
        // SAFETY: SHARING holds the address of the `Shared` of the `beside` running `there` on
        // this thread, alive until `there` returns (and its guard clears SHARING).
        return publish(unsafe { &*(shared as *const Shared) }, parts, f);
    }
    omp_parts(parts, f);
}

/// [`parallel_parts`] on OpenMP's threads (or in order on this thread).
fn omp_parts(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    type Parallel = extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
    extern "C" fn body(data: *mut c_void) {
        // SAFETY: `data` is the Region below, alive until GOMP_parallel returns.
        let r = unsafe { &*(data as *const Region<'_>) };
        r.work();
    }
    let team = tch::get_num_threads().max(1) as usize;
    let par = symbol("GOMP_parallel");
    if parts <= 1 || team == 1 || par.is_null() || in_forked_child() {
        (0..parts).for_each(f);
        return;
    }
    let region = Region::new(f, parts);
    let parallel: Parallel = unsafe { std::mem::transmute(par) };
    parallel(body, &region as *const Region<'_> as *mut c_void, team.min(parts) as c_uint, 0);
    region.raise();
}

/// What [`beside`]'s two threads share: `there`'s state and the parallel region it has
/// published, if any.
struct Shared {
    /// The address of the published [`Region`] (0 when none); helpers join it under this lock.
    region: Mutex<usize>,
    /// Whether a region is published (read without the lock while waiting).
    published: AtomicBool,
    /// `there`: 0 not taken, 1 running, 2 done.
    state: AtomicUsize,
}

thread_local! {
    /// On a thread running [`beside`]'s `there`: the address of that `beside`'s [`Shared`].
    static SHARING: Cell<usize> = const { Cell::new(0) };
}

/// Runs a region's parts on this thread, published for the other thread of `shared`'s `beside`
/// to join; returns once every part has ended.
fn publish(shared: &Shared, parts: usize, f: &(dyn Fn(usize) + Sync)) {
    let region = Region::new(f, parts);
    *shared.region.lock().unwrap_or_else(|e| e.into_inner()) = &region as *const Region<'_> as usize;
    shared.published.store(true, Ordering::SeqCst);
    region.work();
    // No helper joins after this, and those that joined finish their part before it returns.
    shared.published.store(false, Ordering::SeqCst);
    *shared.region.lock().unwrap_or_else(|e| e.into_inner()) = 0;
    while region.helpers.load(Ordering::SeqCst) != 0 {
        std::hint::spin_loop();
    }
    region.raise();
}

/// Works on the regions `there` publishes until `there` ends.
fn help(shared: &Shared) {
    while shared.state.load(Ordering::SeqCst) == 1 {
        if !shared.published.load(Ordering::SeqCst) {
            std::hint::spin_loop();
            continue;
        }
        let joined = {
            let guard = shared.region.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: a published region stays alive until it is unpublished and its helpers
            // are gone; this one is counted before the lock is released.
            let r = (*guard != 0).then(|| unsafe { &*(*guard as *const Region<'_>) });
            r.filter(|r| r.next.load(Ordering::Relaxed) < r.parts).inspect(|r| {
                r.helpers.fetch_add(1, Ordering::SeqCst);
            })
        };
        match joined {
            Some(r) => {
                r.work();
                r.helpers.fetch_sub(1, Ordering::SeqCst);
            }
            None => std::hint::spin_loop(),
        }
    }
}

/// Runs `here` on this thread while `there` runs on another of libtorch's threads, in one
/// parallel region (both in turn on this thread when there is one thread, or when no other
/// thread came to take `there` before `here` ended). Meant for pairing work bound by
/// per-operation overhead (autograd's backward pass) with memory-bound work: libtorch's
/// parallel operations inside the region run on their caller's thread alone, and the engine's
/// ([`parallel_parts`]) inside `there` are shared with this thread once `here` has ended. A
/// panic in either is re-raised after both end.
pub fn beside<H: FnOnce(), T: FnOnce() + Send>(here: H, there: T) {
    /// `here` is not Send: it is taken only on the thread that made it (checked).
    struct CallerOnly<H> {
        f: Mutex<Option<H>>,
        caller: std::thread::ThreadId,
    }
    // SAFETY: the closure inside is only taken and run on `caller`, the thread it came from.
    unsafe impl<H> Sync for CallerOnly<H> {}
    impl<H: FnOnce()> CallerOnly<H> {
        /// Runs the closure if this is the calling thread and it has not run; whether this is
        /// the calling thread.
        fn run_on_caller(&self) -> bool {
            if std::thread::current().id() != self.caller {
                return false;
            }
            // Taken first, so that the lock is not held while it runs.
            let f = self.f.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(f) = f {
                f();
            }
            true
        }
    }
    /// Clears SHARING when `there` ends, unwinding included.
    struct Sharing(usize);
    impl Drop for Sharing {
        fn drop(&mut self) {
            SHARING.with(|s| s.set(self.0));
        }
    }
    let here = CallerOnly { f: Mutex::new(Some(here)), caller: std::thread::current().id() };
    let shared = Shared { region: Mutex::new(0), published: AtomicBool::new(false), state: AtomicUsize::new(0) };
    let there = Mutex::new(Some(there));
    // Taken (and marked running) under the lock, so a thread that finds it gone sees it running
    // or done.
    let take_there = || {
        let mut slot = there.lock().unwrap_or_else(|e| e.into_inner());
        let f = slot.take();
        if f.is_some() {
            shared.state.store(1, Ordering::SeqCst);
        }
        f
    };
    let run_there = |f: T| {
        let outer = SHARING.with(|s| s.replace(&shared as *const Shared as usize));
        let _restore = Sharing(outer);
        let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        shared.state.store(2, Ordering::SeqCst);
        if let Err(e) = ended {
            std::panic::resume_unwind(e);
        }
    };
    // Each thread does its own work (the caller `here`, another thread `there`), then takes
    // `there` if no thread has, or else helps with its parallel parts until it ends.
    let part = |_: usize| {
        here.run_on_caller();
        match take_there() {
            Some(f) => run_there(f),
            None => help(&shared),
        }
    };
    // Its own region (never published, should this run inside another `beside`'s `there`).
    omp_parts(2, &part);
    // What no other thread took (one thread, or none came in time) runs here now.
    here.run_on_caller();
    if let Some(f) = take_there() {
        run_there(f);
    }
}

// --- OpenMP and OpenBLAS, found in the process at run time ---------------------------------------

fn symbol(name: &str) -> *mut c_void {
    let c = CString::new(name).expect("symbol name");
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, c.as_ptr()) }
}

/// Calls `int name(void)` if the process has that symbol.
fn get_int(name: &str) -> Option<c_int> {
    let f = symbol(name);
    (!f.is_null()).then(|| unsafe { std::mem::transmute::<_, extern "C" fn() -> c_int>(f)() })
}

/// Calls `void name(int)` if the process has that symbol.
fn set_int(name: &str, n: c_int) {
    let f = symbol(name);
    if !f.is_null() {
        unsafe { std::mem::transmute::<_, extern "C" fn(c_int)>(f)(n) }
    }
}

fn omp_get_max_threads() -> Option<c_int> {
    get_int("omp_get_max_threads")
}

fn omp_set_num_threads(n: c_int) {
    set_int("omp_set_num_threads", n)
}

fn openblas_get_num_threads() -> Option<c_int> {
    get_int("openblas_get_num_threads")
}

fn openblas_set_num_threads(n: c_int) {
    set_int("openblas_set_num_threads", n)
}

/// OpenBLAS's kernel set ("Haswell", "SkylakeX", "Prescott", ...), if OpenBLAS is loaded.
pub fn openblas_core() -> Option<String> {
    let f = symbol("openblas_get_corename");
    if f.is_null() {
        return None;
    }
    let p = unsafe { std::mem::transmute::<_, extern "C" fn() -> *const c_char>(f)() };
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

const GENERIC_CORES: [&str; 8] = ["Prescott", "Katmai", "Coppermine", "Northwood", "Banias", "Core2", "Penryn", "Unknown"];

/// The OpenBLAS kernel set this CPU supports, when OpenBLAS fell back to a generic one.
pub fn better_openblas_core() -> Option<&'static str> {
    let core = openblas_core()?;
    if !GENERIC_CORES.iter().any(|g| core.eq_ignore_ascii_case(g)) || std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("avx512cd") {
            return Some("SkylakeX");
        }
        if has!("avx2") && has!("fma") {
            return Some("Haswell");
        }
    }
    None
}

/// Re-runs OpenBLAS's (dynamic-arch) kernel selection with `core`, or with its own detection when
/// `core` is `None`.
fn select_openblas_core(core: Option<&str>) -> bool {
    let (init, quit) = (symbol("gotoblas_dynamic_init"), symbol("gotoblas_dynamic_quit"));
    if init.is_null() || quit.is_null() {
        return false;
    }
    unsafe {
        let init: extern "C" fn() = std::mem::transmute(init);
        let quit: extern "C" fn() = std::mem::transmute(quit);
        if let Some(c) = core {
            std::env::set_var("OPENBLAS_CORETYPE", c);
        }
        quit();
        init();
        if core.is_some() {
            std::env::remove_var("OPENBLAS_CORETYPE");
        }
    }
    true
}

fn retune_openblas() -> bool {
    match better_openblas_core() {
        Some(core) => select_openblas_core(Some(core)),
        None => false,
    }
}

fn restore_openblas() {
    select_openblas_core(None);
}

/// glibc's mmap / trim / top-pad thresholds: raised (`true`: large per-step tensors are recycled
/// instead of being mapped and unmapped every minibatch) or set back to glibc's defaults.
fn set_allocator_thresholds(raise: bool) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        let (mmap, trim, pad) = if raise { (64 << 20, 256 << 20, 64 << 20) } else { (128 << 10, 128 << 10, 128 << 10) };
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim);
        libc::mallopt(libc::M_TOP_PAD, pad);
        return true;
    }
    #[allow(unreachable_code)]
    {
        let _ = raise;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_restores_float_flags_and_threads() {
        let before_csr = read_mxcsr();
        let before_torch = tch::get_num_threads();
        {
            let _s = Session::enter(SessionOptions { n_threads: Some(1), ..Default::default() });
            if let Some(v) = read_mxcsr() {
                assert_eq!(v & FTZ_DAZ, FTZ_DAZ, "flush-to-zero is on inside a session");
            }
            assert_eq!(tch::get_num_threads(), 1);
        }
        assert_eq!(read_mxcsr(), before_csr, "MXCSR restored");
        assert_eq!(tch::get_num_threads(), before_torch, "libtorch threads restored");
        let tiny = std::hint::black_box(f64::MIN_POSITIVE) / std::hint::black_box(4.0);
        assert!(tiny > 0.0, "denormals survive after the session");
    }

    #[test]
    fn cuda_state_agrees_with_libtorch() {
        let s = cuda_state();
        assert!(s.devices >= 0);
        if !s.built {
            assert_eq!(s.devices, 0, "a CPU build sees no CUDA device");
            assert!(!cuda_available());
        }
        // The reason for refusing the GPU is given exactly when no CUDA device can be used, and
        // it says what to do.
        match gpu_unavailable_reason() {
            None => assert!(cuda_available() && s.devices > 0),
            Some(why) if s.built => assert!(why.contains("nvidia-smi"), "{why}"),
            Some(why) => assert!(why.contains("SCVIR_CUDA=1") && why.contains("install_libtorch(cuda = TRUE)"), "{why}"),
        }
    }

    #[test]
    fn available_cores_is_positive() {
        assert!(available_cores() >= 1);
    }

    /// Runs `f` with libtorch on `threads` threads (this test thread's setting), then restores it.
    fn on_threads<R>(threads: i32, f: impl FnOnce() -> R) -> R {
        let before = tch::get_num_threads();
        tch::set_num_threads(threads);
        let r = f();
        tch::set_num_threads(before);
        r
    }

    #[test]
    fn parts_are_one_per_thread() {
        on_threads(1, || assert_eq!(parts_for(100), 1));
        on_threads(2, || {
            assert_eq!(parts_for(100), 2);
            assert_eq!(parts_for(1), 1);
            assert_eq!(parts_for(0), 1);
            // Inside beside's `there`, four per thread (the caller of beside takes some).
            beside(|| {}, || assert_eq!(parts_for(100), 8));
            assert_eq!(parts_for(100), 2);
        });
    }

    /// Runs `run` at 2 threads with a recorder of the thread each part ran on, checks that every
    /// part ran once, and gives those threads (None without OpenMP, where all ran here in order).
    fn threads_of_parts(parts: usize, run: impl FnOnce(&(dyn Fn(usize) + Sync))) -> Option<Vec<std::thread::ThreadId>> {
        let ran: Vec<Mutex<Vec<std::thread::ThreadId>>> = (0..parts).map(|_| Mutex::new(Vec::new())).collect();
        on_threads(2, || run(&|p| ran[p].lock().unwrap().push(std::thread::current().id())));
        let ran: Vec<std::thread::ThreadId> = ran.into_iter().map(|m| {
            let v = m.into_inner().unwrap();
            assert_eq!(v.len(), 1, "every part runs once");
            v[0]
        }).collect();
        (!symbol("GOMP_parallel").is_null()).then_some(ran)
    }

    #[test]
    fn a_slow_part_does_not_hold_up_the_others() {
        let parts = 4;
        let Some(ran) = threads_of_parts(parts, |record| {
            parallel_parts(parts, &|p| {
                if p == 0 {
                    // A part on a thread that something else slows down.
                    std::thread::sleep(std::time::Duration::from_millis(300));
                }
                record(p);
            })
        }) else { return };
        // Dealt out in turn, the slow part's thread would also have run half of the others.
        let with_slow = ran.iter().filter(|&&t| t == ran[0]).count();
        assert!(with_slow < parts / 2, "the other thread took the parts left ({with_slow} of {parts} ran beside the slow one)");
    }

    #[test]
    fn beside_shares_the_parts_of_there_once_here_is_done() {
        let parts = 8;
        let me = std::thread::current().id();
        let Some(ran) = threads_of_parts(parts, |record| {
            beside(|| {}, || {
                parallel_parts(parts, &|p| {
                    std::thread::sleep(std::time::Duration::from_millis(30));
                    record(p);
                })
            })
        }) else { return };
        let by_caller = ran.iter().filter(|&&t| t == me).count();
        assert!(by_caller > 0 && by_caller < parts, "the caller of beside took {by_caller} of {parts} parts");
    }

    #[test]
    fn a_panic_in_a_shared_part_reaches_the_caller_and_sharing_ends() {
        on_threads(2, || {
            let hit = std::panic::catch_unwind(|| {
                beside(|| {}, || {
                    parallel_parts(8, &|p| {
                        std::thread::sleep(std::time::Duration::from_millis(5));
                        if p == 5 {
                            panic!("part 5");
                        }
                    })
                })
            });
            assert!(hit.is_err(), "the panic is raised again");
            assert_eq!(SHARING.with(Cell::get), 0, "no thread is left sharing");
            // Regions run as before afterwards.
            let count = AtomicUsize::new(0);
            parallel_parts(4, &|_| {
                count.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(count.load(Ordering::SeqCst), 4);
        });
    }

    #[test]
    fn beside_runs_here_on_this_thread_and_each_once() {
        for threads in [1, 2] {
            let me = std::thread::current().id();
            let (mut here_on, mut there_runs) = (Vec::new(), AtomicUsize::new(0));
            on_threads(threads, || {
                beside(|| here_on.push(std::thread::current().id()), || {
                    there_runs.fetch_add(1, Ordering::SeqCst);
                })
            });
            assert_eq!(here_on, vec![me], "{threads} thread(s)");
            assert_eq!(*there_runs.get_mut(), 1, "{threads} thread(s)");
        }
    }
}
