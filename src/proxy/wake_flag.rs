//! A waker that notes that it was woken before it passes the wake-up on to
//! its task, so that a future made of several parts polls only the parts
//! whose waker fired.
//!
//! A WebSocket relay is woken by one side's bytes at a time, and polling
//! the other side to find it has nothing costs a read through several
//! layers and a waker registered under a lock; a session guard is woken once in
//! its life, and polling it takes the lock of a watch channel that all of
//! the session's live connections share. With a flag each, asking whether
//! a part has anything to do costs one atomic load when it was not woken,
//! and a swap when it was.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Wake, Waker};

pub struct WakeFlag {
    shared: Arc<Shared>,
    /// Wakes `shared`: the waker to poll the part with.
    waker: Waker,
    /// The poller's copy of the task waker in `shared.task`, so that asking
    /// whether it is still the right one takes no lock.
    registered: Option<Waker>,
}

struct Shared {
    /// Woken since last taken (true at first: the part was never polled).
    woken: AtomicBool,
    /// The task the part belongs to. A wake-up wakes it by reference and
    /// leaves it in place, so it is registered again only when the part is
    /// polled from another task (for a spawned task: never). That is what
    /// makes [`WakeFlag::take`] cheap when nothing woke the part: one load.
    task: Mutex<Option<Waker>>,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl Shared {
    /// Puts `task` in place; the one it replaces is dropped outside the lock.
    fn replace_task(&self, task: Option<Waker>) {
        let old = std::mem::replace(
            &mut *self.task.lock().unwrap_or_else(PoisonError::into_inner),
            task,
        );
        drop(old);
    }
}

impl Default for WakeFlag {
    fn default() -> Self {
        let shared = Arc::new(Shared {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Self {
            waker: Waker::from(shared.clone()),
            shared,
            registered: None,
        }
    }
}

impl WakeFlag {
    /// Whether the part was woken (or never polled) since the last call;
    /// makes `cx`'s task the one to wake. Poll the part with
    /// [`waker`](Self::waker) right after a true answer.
    pub fn take(&mut self, cx: &Context<'_>) -> bool {
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let task = cx.waker().clone();
            self.shared.replace_task(Some(task.clone()));
            self.registered = Some(task);
        }
        // The task is registered before the flag is read: a wake-up that
        // sets the flag after this load finds the task and wakes it.
        self.shared.woken.load(Ordering::Acquire) && self.shared.woken.swap(false, Ordering::AcqRel)
    }

    /// Marks the part as having something to do at the next [`take`](Self::take).
    pub fn set(&self) {
        self.shared.woken.store(true, Ordering::Release);
    }

    pub fn waker(&self) -> &Waker {
        &self.waker
    }
}

impl Drop for WakeFlag {
    /// Lets go of the task: whatever still holds [`waker`](Self::waker)
    /// (an I/O registration being torn down) no longer keeps it alive.
    fn drop(&mut self) {
        self.shared.replace_task(None);
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
        let mut flag = WakeFlag::default();
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

    #[test]
    fn every_wake_reaches_the_task_that_polled_last() {
        let first = Arc::new(Counter(AtomicUsize::new(0)));
        let second = Arc::new(Counter(AtomicUsize::new(0)));
        let (first_waker, second_waker) = (Waker::from(first.clone()), Waker::from(second.clone()));
        let mut flag = WakeFlag::default();
        assert!(flag.take(&Context::from_waker(&first_waker)));
        for round in 1..=3 {
            // Registered once, the task stays registered across wake-ups.
            flag.waker().wake_by_ref();
            assert_eq!(first.0.load(Ordering::Relaxed), round);
            assert!(flag.take(&Context::from_waker(&first_waker)));
            assert!(!flag.take(&Context::from_waker(&first_waker)));
        }
        // Polled from another task: that one is woken from now on.
        assert!(!flag.take(&Context::from_waker(&second_waker)));
        flag.waker().wake_by_ref();
        assert_eq!(
            first.0.load(Ordering::Relaxed),
            3,
            "the old task is left alone"
        );
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
        assert!(flag.take(&Context::from_waker(&second_waker)));
        // Dropped: the task is let go, and a late wake-up is harmless.
        let late = flag.waker().clone();
        drop(flag);
        assert_eq!(
            Arc::strong_count(&second),
            2,
            "only the test's two handles are left"
        );
        late.wake();
        assert_eq!(second.0.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_wake_from_another_thread_reaches_the_task() {
        let mut flag = WakeFlag::default();
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
