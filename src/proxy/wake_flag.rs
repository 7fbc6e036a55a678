//! A waker that notes that it was woken before it passes the wake-up on to
//! its task, so that a future made of several parts polls only the parts
//! whose waker fired.
//!
//! A WebSocket relay is woken by one side's bytes at a time, and polling
//! the other side to find it has nothing costs a buffer taken and given
//! back and a read through several layers; a session guard is woken once in
//! its life, and polling it takes the lock of a watch channel that all of
//! the session's live connections share. With a flag each, asking whether
//! a part has anything to do costs one atomic swap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

pub struct WakeFlag {
    shared: Arc<Shared>,
    /// Wakes `shared`: the waker to poll the part with.
    waker: Waker,
}

struct Shared {
    /// Woken since last taken (true at first: the part was never polled).
    woken: AtomicBool,
    /// The task the part belongs to.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for WakeFlag {
    fn default() -> Self {
        let shared = Arc::new(Shared {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Self {
            waker: Waker::from(shared.clone()),
            shared,
        }
    }
}

impl WakeFlag {
    /// Whether the part was woken (or never polled) since the last call;
    /// registers `cx`'s task as the one to wake. Poll the part with
    /// [`waker`](Self::waker) right after a true answer.
    pub fn take(&self, cx: &Context<'_>) -> bool {
        self.shared.task.register(cx.waker());
        self.shared.woken.swap(false, Ordering::AcqRel)
    }

    /// Marks the part as having something to do at the next [`take`](Self::take).
    pub fn set(&self) {
        self.shared.woken.store(true, Ordering::Release);
    }

    pub fn waker(&self) -> &Waker {
        &self.waker
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Poll;

    use super::*;

    /// A task waker that counts its wake-ups.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_part_is_due_at_first_and_then_only_once_woken() {
        let task = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let cx = Context::from_waker(&waker);
        let flag = WakeFlag::default();
        assert!(flag.take(&cx), "never polled: due");
        assert!(!flag.take(&cx), "not woken since");
        flag.waker().wake_by_ref();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task is woken");
        assert!(flag.take(&cx), "woken: due");
        assert!(!flag.take(&cx));
        flag.set();
        assert!(flag.take(&cx), "set by hand: due");
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "set wakes no task");
    }

    #[tokio::test]
    async fn a_wake_from_another_thread_reaches_the_task() {
        let flag = WakeFlag::default();
        let waker = flag.waker().clone();
        let mut polled = false;
        let waiting = tokio::spawn(std::future::poll_fn(move |cx| {
            // The first answer is "never polled"; wait for a real wake-up.
            let due = flag.take(cx);
            if due && std::mem::replace(&mut polled, true) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        tokio::task::yield_now().await;
        std::thread::spawn(move || waker.wake()).join().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the task was woken")
            .unwrap();
    }
}
