//! Engine workers: one dedicated OS thread per engine, never a tokio worker.
//!
//! Inference is synchronous, CPU-bound and long (tens of milliseconds to seconds), so each
//! engine lives on its own thread and takes jobs from a bounded queue, in order. A job is a
//! closure over `&mut E`; its result comes back on a oneshot channel that the async side
//! awaits. Streaming jobs carry their own channel into the closure.
//!
//! Loading happens on the worker thread too, so start-up (MQTT online, capabilities) does not
//! wait for model files. If loading fails, the worker stays up and answers every job with the
//! load error, which names the configuration key and the file: the daemon keeps serving the
//! other stages.
//!
//! A full queue refuses the job at once ([`SubmitError::Busy`]); nothing waits without bound
//! (ARCHITECTURE.md, "Backpressure").

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Instant;

use tokio::sync::oneshot;

type Job<E> = Box<dyn FnOnce(&mut E) + Send>;

/// What an engine does when its worker finds nothing queued after a job: give back the
/// buffers sized by that job (the LLM's batch scratch after a long prompt), so that a daemon
/// at rest holds what a turn needs, not the largest job's high-water mark. The allocator's
/// free pages go back to the kernel right after ([`crate::heap::trim`]).
pub trait Rest {
    /// Frees job-sized buffers; the default keeps everything (buffers of a fixed size).
    fn rest(&mut self) {}
}

/// Whether a worker's engine is loaded, still loading, or failed to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    Loading,
    Ready { load_ms: u64 },
    Failed(String),
}

/// Why a job did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the {0} queue is full; try again later")]
    Busy(&'static str),
    #[error("{0}")]
    Unavailable(String),
    #[error("the {0} engine failed while running this request (see the log)")]
    Crashed(&'static str),
}

struct Shared {
    name: &'static str,
    state: OnceLock<Result<u64, String>>,
    queued: AtomicUsize,
}

/// A handle to one engine thread. Cloning shares the thread; it ends when every handle is
/// dropped and the queue is drained.
pub struct Worker<E> {
    tx: mpsc::SyncSender<Job<E>>,
    shared: Arc<Shared>,
}

impl<E> Clone for Worker<E> {
    fn clone(&self) -> Self {
        Worker {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<E: 'static> Worker<E> {
    /// Starts the thread, which first runs `load`, then jobs in order. At most `queue` jobs
    /// wait; more are refused as busy.
    pub fn spawn(
        name: &'static str,
        queue: usize,
        load: impl FnOnce() -> Result<E, String> + Send + 'static,
    ) -> Worker<E>
    where
        E: Rest,
    {
        let (tx, rx) = mpsc::sync_channel::<Job<E>>(queue.max(1));
        let shared = Arc::new(Shared {
            name,
            state: OnceLock::new(),
            queued: AtomicUsize::new(0),
        });
        let thread_shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("sotad-{name}"))
            .spawn(move || {
                let started = Instant::now();
                let loaded = std::panic::catch_unwind(AssertUnwindSafe(load))
                    .unwrap_or_else(|_| Err(format!("loading the {name} engine panicked")));
                match loaded {
                    Ok(mut engine) => {
                        // Loading freed its temporaries (weights decoded before re-laying
                        // them out): their pages go back to the kernel.
                        crate::heap::trim();
                        let load_ms = started.elapsed().as_millis() as u64;
                        tracing::info!(engine = name, load_ms, "engine ready");
                        let _ = thread_shared.state.set(Ok(load_ms));
                        while let Ok(job) = rx.recv() {
                            thread_shared.queued.fetch_sub(1, Ordering::Relaxed);
                            // A panicking job drops its result sender: the caller gets
                            // `Crashed`, and the thread goes on with the next job.
                            let _ = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut engine)));
                            // Nothing waiting: the job-sized buffers and the pages the job
                            // freed (activations) go back to the kernel, so that idle memory
                            // does not keep the largest job's.
                            if thread_shared.queued.load(Ordering::Relaxed) == 0 {
                                let _ =
                                    std::panic::catch_unwind(AssertUnwindSafe(|| engine.rest()));
                                crate::heap::trim();
                            }
                        }
                    }
                    Err(message) => {
                        tracing::error!(engine = name, error = message, "engine not available");
                        let _ = thread_shared.state.set(Err(message));
                        // Jobs are refused by `submit` from now on; drain any that raced in.
                        while rx.recv().is_ok() {
                            thread_shared.queued.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            let _ = shared
                .state
                .set(Err(format!("could not start the {name} thread: {e}")));
        }
        Worker { tx, shared }
    }

    pub fn name(&self) -> &'static str {
        self.shared.name
    }

    pub fn state(&self) -> EngineState {
        match self.shared.state.get() {
            None => EngineState::Loading,
            Some(Ok(ms)) => EngineState::Ready { load_ms: *ms },
            Some(Err(e)) => EngineState::Failed(e.clone()),
        }
    }

    /// Jobs waiting (not counting the one running).
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Queues `job`; the returned future resolves with its result once it has run.
    pub fn submit<R, F>(
        &self,
        job: F,
    ) -> Result<impl Future<Output = Result<R, SubmitError>> + use<E, R, F>, SubmitError>
    where
        R: Send + 'static,
        F: FnOnce(&mut E) -> R + Send + 'static,
    {
        if let Some(Err(message)) = self.shared.state.get() {
            return Err(SubmitError::Unavailable(message.clone()));
        }
        let (done_tx, done_rx) = oneshot::channel();
        let boxed: Job<E> = Box::new(move |engine: &mut E| {
            let _ = done_tx.send(job(engine));
        });
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.try_send(boxed) {
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(match e {
                mpsc::TrySendError::Full(_) => SubmitError::Busy(self.shared.name),
                mpsc::TrySendError::Disconnected(_) => self.gone(),
            });
        }
        let shared = self.shared.clone();
        Ok(async move {
            done_rx.await.map_err(|_| match shared.state.get() {
                Some(Err(message)) => SubmitError::Unavailable(message.clone()),
                _ => SubmitError::Crashed(shared.name),
            })
        })
    }

    fn gone(&self) -> SubmitError {
        match self.shared.state.get() {
            Some(Err(message)) => SubmitError::Unavailable(message.clone()),
            _ => SubmitError::Crashed(self.shared.name),
        }
    }
}

/// Engine threads for a `threads` key: `0` means one per core.
pub fn threads(configured: usize) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    impl Rest for Vec<u32> {}
    impl Rest for () {}
    impl Rest for std::sync::mpsc::Receiver<()> {}

    /// A plumbing engine that counts how often its worker let it rest.
    #[derive(Default)]
    struct PlumbingRests(usize);

    impl Rest for PlumbingRests {
        fn rest(&mut self) {
            self.0 += 1;
        }
    }

    #[tokio::test]
    async fn an_idle_worker_lets_its_engine_rest_after_a_job() {
        let worker = Worker::spawn("plumbing", 4, || Ok(PlumbingRests::default()));
        assert_eq!(worker.submit(|e| e.0).unwrap().await.unwrap(), 0);
        // The rest follows the job's answer; a later job sees it.
        let mut seen = 0;
        for _ in 0..200 {
            seen = worker.submit(|e| e.0).unwrap().await.unwrap();
            if seen > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(seen >= 1, "the engine never rested");
    }

    #[tokio::test]
    async fn jobs_run_in_order_on_the_worker_thread() {
        let worker = Worker::spawn("plumbing", 4, || Ok(Vec::<u32>::new()));
        let a = worker.submit(|v| {
            v.push(1);
            std::thread::current().name().map(str::to_string)
        });
        let b = worker.submit(|v| {
            v.push(2);
            v.clone()
        });
        let thread = a.unwrap().await.unwrap();
        assert_eq!(thread.as_deref(), Some("sotad-plumbing"));
        assert_eq!(b.unwrap().await.unwrap(), vec![1, 2]);
        assert!(matches!(worker.state(), EngineState::Ready { .. }));
    }

    #[tokio::test]
    async fn failed_load_refuses_jobs_with_its_message() {
        let worker: Worker<()> =
            Worker::spawn("plumbing", 4, || Err("stt.model: no such file".into()));
        // The first submit may race the load; its result still carries the message.
        let first = match worker.submit(|_| ()) {
            Ok(fut) => fut.await.unwrap_err(),
            Err(e) => e,
        };
        assert_eq!(
            first,
            SubmitError::Unavailable("stt.model: no such file".into())
        );
        let second = worker.submit(|_| ()).err().unwrap();
        assert_eq!(
            second,
            SubmitError::Unavailable("stt.model: no such file".into())
        );
        assert_eq!(
            worker.state(),
            EngineState::Failed("stt.model: no such file".into())
        );
    }

    #[tokio::test]
    async fn full_queue_is_busy_and_a_panicking_job_does_not_kill_the_thread() {
        let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
        let worker = Worker::spawn("plumbing", 1, move || Ok(gate_rx));
        // Job 1 blocks the thread until the gate opens; job 2 fills the queue; job 3 is refused.
        let running = worker.submit(|gate| gate.recv().ok()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let queued = worker
            .submit(|_| panic!("plumbing test: a job that panics"))
            .unwrap();
        let refused = worker.submit(|_| ()).err().unwrap();
        assert_eq!(refused, SubmitError::Busy("plumbing"));
        gate_tx.send(()).unwrap();
        assert_eq!(running.await.unwrap(), Some(()));
        assert_eq!(queued.await.unwrap_err(), SubmitError::Crashed("plumbing"));
        let after = worker.submit(|_| 7).unwrap().await.unwrap();
        assert_eq!(after, 7);
    }
}
