//! A single-threaded "something changed" signal for tasks on one core.
//!
//! Waiters register and are all woken by `notify_all`; each then re-checks the state it
//! cares about (the usual condition-variable discipline). It needs no runtime, so the shard
//! log runs unchanged on glommio and under a plain `block_on` in tests.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub struct Notify {
    epoch: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn new() -> Notify {
        Notify::default()
    }

    /// Wakes every task waiting now.
    pub fn notify_all(&self) {
        self.epoch.set(self.epoch.get() + 1);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the next `notify_all` after this call.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            epoch: self.epoch.get(),
        }
    }
}

#[derive(Debug)]
pub struct Wait<'a> {
    notify: &'a Notify,
    epoch: u64,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.epoch {
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
