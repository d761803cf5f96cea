//! A small persistent thread pool for the forward pass.
//!
//! Starting a thread costs tens of microseconds, more than one decode-sized matrix-vector
//! product of a 135M model; these workers start once per model and wait for work by spinning
//! briefly, then sleeping on a condition variable. A job is `n` tasks run as `f(task)`; the
//! calling thread takes tasks too and returns when all are done.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Task<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped for every job (and at shutdown).
    epoch: AtomicUsize,
    /// The current job: written by the caller before it bumps `epoch`, read by workers
    /// after they see the new epoch, valid until `pending` reaches 0.
    job: UnsafeCell<Option<(Task<'static>, usize)>>,
    next: AtomicUsize,
    pending: AtomicUsize,
    /// Workers between deciding to look at the job and being done with it.
    active: AtomicUsize,
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the caller (`run` takes `&mut self`), and only while no
// worker can read it: before `pending` is raised (workers read it only after seeing
// `pending > 0`), and after `pending` and `active` are both back to zero.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// Workers for one model; `threads` includes the calling thread.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    threads: usize,
}

const SPIN: usize = 20_000;

impl Pool {
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let handles = (1..threads)
            .filter_map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("sotad-llm-{i}"))
                    .spawn(move || worker(&s))
                    .ok()
            })
            .collect::<Vec<_>>();
        let threads = handles.len() + 1;
        Pool {
            shared,
            handles,
            threads,
        }
    }

    /// Threads, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(0) .. f(n - 1)` on the workers and the calling thread.
    ///
    /// # Panics
    ///
    /// If a task panicked (after every task has finished).
    pub fn run(&mut self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n == 0 {
            return;
        }
        if self.threads == 1 || n == 1 {
            (0..n).for_each(f);
            return;
        }
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only until this function returns, and it returns
        // only after every task (hence every use of `f`) has finished.
        let f_static: Task<'static> = unsafe { std::mem::transmute::<Task<'_>, Task<'static>>(f) };
        unsafe { *s.job.get() = Some((f_static, n)) };
        s.next.store(0, Ordering::SeqCst);
        s.pending.store(n, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::Release);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        run_tasks(s);
        let mut spins = 0usize;
        while s.pending.load(Ordering::SeqCst) != 0 || s.active.load(Ordering::SeqCst) != 0 {
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // No worker can read the job now: any that starts looking sees `pending == 0`.
        unsafe { *s.job.get() = None };
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("an LLM worker task panicked");
        }
    }
}

fn run_tasks(s: &Shared) {
    // SAFETY: see `Shared`; the job stays valid while tasks of it are pending.
    let Some((f, n)) = (unsafe { *s.job.get() }) else {
        return;
    };
    loop {
        let t = s.next.fetch_add(1, Ordering::Relaxed);
        if t >= n {
            return;
        }
        if catch_unwind(AssertUnwindSafe(|| f(t))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0usize;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if spins < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let g = s
                .wake
                .wait_while(g, |_| s.epoch.load(Ordering::SeqCst) == seen)
                .unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            spins = 0;
        }
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        // A job whose tasks were all finished before we looked is skipped; while `active`
        // counts us, the caller does not touch the job.
        s.active.fetch_add(1, Ordering::SeqCst);
        if s.pending.load(Ordering::SeqCst) > 0 {
            run_tasks(s);
        }
        s.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.epoch.fetch_add(1, Ordering::SeqCst);
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
