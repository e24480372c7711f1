//! The thread that appends every recording's buffered bytes to its file.
//!
//! A recording writes its file every few hundred milliseconds ([`super::stream`]), and all
//! recordings do it on the same grid tick. On tokio's blocking pool each of those writes woke a
//! pool thread of its own (a dozen at once at 32 publishers) and then the recorder: two
//! context switches or more per write, ~5 % of the recorder's CPU at 32 publishers on a 2-vCPU
//! VM (issue 11). Here one thread takes them in turn, and hands the results back together
//! once it has no more: about one wake of each side per tick's writes.
//!
//! The trade: the recordings' appends wait behind each other, so a stalled disk stalls all of
//! them. It would anyway: they share the output folder. What it never stalls is a runtime
//! thread, the peer connections or the signalling; each recorder's media queue (bounded)
//! absorbs the wait, and what overflows it is dropped and counted as before. Slow calls that
//! are not appends (a file's final sync) stay on the blocking pool.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::OnceLock;
use std::sync::mpsc;

use tracing::warn;

/// A write; what it returns hands its result back to the recorder that asked for it.
type Job = Box<dyn FnOnce() -> Reply + Send>;
type Reply = Box<dyn FnOnce() + Send>;

/// The writer thread's queue; `None` if the thread could not be started (then the blocking
/// pool does the work, as it did before).
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let started = std::thread::Builder::new()
                .name("ninjarec-writer".into())
                .spawn(move || {
                    // The results go back once the queue is empty: a tick's writes wake the
                    // runtime once, not once each (its worker would park between them).
                    // Ends when the process does: the queue's sender is never dropped.
                    let mut replies = Vec::new();
                    while let Ok(job) = rx.recv() {
                        replies.push(job());
                        while let Ok(job) = rx.try_recv() {
                            replies.push(job());
                        }
                        for reply in replies.drain(..) {
                            reply();
                        }
                    }
                });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    warn!("no writer thread ({e}): files are written on the blocking pool");
                    None
                }
            }
        })
        .as_ref()
}

/// Runs `f` on the writer thread and waits for it, in turn with every other recording's
/// writes. A panic inside is the caller's panic, raised here (the recorder's supervisor sees
/// it); the thread itself goes on with the next job.
pub(crate) async fn run<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    let Some(queue) = queue() else {
        return blocking(f).await;
    };
    let (done, result) = tokio::sync::oneshot::channel::<Result<R, Box<dyn Any + Send>>>();
    let job: Job = Box::new(move || {
        let result = catch_unwind(AssertUnwindSafe(f));
        Box::new(move || {
            let _ = done.send(result);
        })
    });
    if queue.send(job).is_err() {
        panic!("the writer thread has ended");
    }
    match result.await {
        Ok(Ok(r)) => r,
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("the writer thread dropped a write"),
    }
}

/// Runs `f` on tokio's blocking pool and waits for it; a panic inside is the caller's.
pub(crate) async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => resume_unwind(e.into_panic()),
        Err(e) => panic!("file write not run: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_run_in_turn_and_a_panicking_one_is_its_callers_alone() {
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let jobs = (0..8).map(|i| {
            let order = order.clone();
            run(move || {
                order.lock().unwrap().push(i);
                i * 10
            })
        });
        let results = futures_util::future::join_all(jobs).await;
        assert_eq!(results, (0..8).map(|i| i * 10).collect::<Vec<_>>());
        // Queued in the order they were first polled: in turn, none lost.
        assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());

        let panicked = tokio::spawn(run(|| -> u8 { panic!("disk on fire") })).await;
        let e = panicked.expect_err("the caller panics");
        assert!(e.is_panic());
        // The thread goes on.
        assert_eq!(run(|| 7).await, 7);
    }
}
