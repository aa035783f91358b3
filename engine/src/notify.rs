//! A single-threaded "something changed" signal for tasks on one core.
//!
//! Waiters register and are all woken by `notify_all`; each then re-checks the state it
//! cares about (the usual condition-variable discipline). A waiter that gives up (a
//! long-poll that times out, a request whose connection went away) unregisters when its
//! future is dropped, so the list holds only live waiters. It needs no runtime, so the store
//! runs unchanged on glommio and under a plain executor in tests.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub struct Notify {
    epoch: Cell<u64>,
    /// Registered wakers by slot, with the slot's generation (a waiter unregisters only
    /// its own registration, never a later one that reused the slot); `None` is free.
    slots: RefCell<Vec<(u64, Option<Waker>)>>,
    free: RefCell<Vec<usize>>,
    registered: Cell<usize>,
}

impl Notify {
    pub fn new() -> Notify {
        Notify::default()
    }

    /// Wakes every task waiting now.
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        if self.registered.get() == 0 {
            return;
        }
        let wakers: Vec<Waker> = {
            let mut slots = self.slots.borrow_mut();
            let mut free = self.free.borrow_mut();
            let mut out = Vec::with_capacity(self.registered.get());
            for (i, s) in slots.iter_mut().enumerate() {
                if let Some(w) = s.1.take() {
                    out.push(w);
                    free.push(i);
                }
            }
            out
        };
        self.registered.set(0);
        for w in wakers {
            w.wake();
        }
    }

    /// Resolves at the next `notify_all` after this call.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            epoch: self.epoch.get(),
            slot: None,
        }
    }

    /// Waiters registered now (a bound tests check).
    pub fn waiters(&self) -> usize {
        self.registered.get()
    }

    fn unregister(&self, slot: usize, generation: u64) {
        let mut slots = self.slots.borrow_mut();
        let s = &mut slots[slot];
        if s.0 == generation && s.1.take().is_some() {
            self.free.borrow_mut().push(slot);
            self.registered.set(self.registered.get() - 1);
        }
    }
}

#[derive(Debug)]
pub struct Wait<'a> {
    notify: &'a Notify,
    epoch: u64,
    slot: Option<(usize, u64)>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let n = self.notify;
        if n.epoch.get() != self.epoch {
            self.slot = None;
            return Poll::Ready(());
        }
        let mut slots = n.slots.borrow_mut();
        match self.slot {
            Some((i, g)) if slots[i].0 == g && slots[i].1.is_some() => {
                let w = slots[i].1.as_mut().expect("registered");
                if !w.will_wake(cx.waker()) {
                    *w = cx.waker().clone();
                }
            }
            _ => {
                let i = match n.free.borrow_mut().pop() {
                    Some(i) => i,
                    None => {
                        slots.push((0, None));
                        slots.len() - 1
                    }
                };
                let g = slots[i].0 + 1;
                slots[i] = (g, Some(cx.waker().clone()));
                n.registered.set(n.registered.get() + 1);
                self.slot = Some((i, g));
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some((i, g)) = self.slot {
            self.notify.unregister(i, g);
        }
    }
}

/// A lock for tasks on one core: one holder at a time, the others wait (in no set order).
#[derive(Debug, Default)]
pub struct TaskLock {
    held: Cell<bool>,
    released: Notify,
}

impl TaskLock {
    pub fn new() -> TaskLock {
        TaskLock::default()
    }

    /// Waits for the lock; it is released when the guard drops (also if the holding future
    /// is dropped half-way).
    pub async fn lock(&self) -> TaskLockGuard<'_> {
        while self.held.get() {
            self.released.wait().await;
        }
        self.held.set(true);
        TaskLockGuard(self)
    }
}

pub struct TaskLockGuard<'a>(&'a TaskLock);

/// A [`TaskLockGuard`] that owns its lock, so it can move into a spawned task.
pub struct OwnedTaskLockGuard(std::rc::Rc<TaskLock>);

impl TaskLock {
    /// As [`TaskLock::lock`], for a lock shared by `Rc`.
    pub async fn lock_owned(lock: &std::rc::Rc<TaskLock>) -> OwnedTaskLockGuard {
        std::mem::forget(lock.lock().await);
        OwnedTaskLockGuard(lock.clone())
    }
}

impl Drop for OwnedTaskLockGuard {
    fn drop(&mut self) {
        self.0.held.set(false);
        self.0.released.notify_all();
    }
}

impl Drop for TaskLockGuard<'_> {
    fn drop(&mut self) {
        self.0.held.set(false);
        self.0.released.notify_all();
    }
}

/// Runs a closure when dropped (resets a flag or a count however the future holding it ends).
pub(crate) struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub(crate) fn new(f: F) -> OnDrop<F> {
        OnDrop(Some(f))
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_waiters_unregister_and_notify_wakes_the_rest() {
        let n = Notify::new();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..1000 {
            let mut w = Box::pin(n.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
            assert!(
                w.as_mut().poll(&mut cx).is_pending(),
                "re-polling keeps one slot"
            );
        }
        assert_eq!(n.waiters(), 0, "timed-out waiters left nothing behind");
        let mut a = Box::pin(n.wait());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert_eq!(n.waiters(), 1);
        n.notify_all();
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert_eq!(n.waiters(), 0);
        assert!(n.slots.borrow().len() <= 2, "slots are reused");
    }
}
