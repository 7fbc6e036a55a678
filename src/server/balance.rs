//! Spreading connections over the serving threads by how many each serves.
//!
//! Every serving thread accepts from the same listening socket, and whichever
//! thread the kernel wakes first takes the connection. Under a burst of new
//! connections that can put most or all of them on one thread (seen here: 64
//! keep-alive connections from one client, all 64 on one of two threads,
//! which then ran at full load while the other stayed idle), and a
//! connection never moves once it is served. So each thread counts the
//! connections it serves ([`Load`]); a thread that accepts one while it
//! serves at least [`SLACK`] more than the least loaded thread hands it on
//! to that thread ([`Lane::place`]), before reading a byte of it. A hand-off
//! costs one channel message and one wake of the other thread, per
//! connection, and only while the threads are out of balance; requests on
//! an open connection never cross threads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::Conns;

/// How many more connections than the least loaded thread a thread may
/// serve before it hands new ones on.
pub const SLACK: usize = 2;

/// The serving threads' connection counts, and a way to hand each one a
/// connection.
pub struct Balance {
    loads: Vec<AtomicUsize>,
    inboxes: Vec<UnboundedSender<Handoff>>,
}

/// A connection accepted on one thread, to be served on another.
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub slot: OwnedSemaphorePermit,
    /// Already counted on the receiving thread.
    pub load: Option<Load>,
}

/// One thread's part: its number and its inbox.
pub struct Lane {
    pub me: usize,
    pub balance: Arc<Balance>,
    pub inbox: UnboundedReceiver<Handoff>,
}

/// One connection counted on a thread, for as long as it is kept.
pub struct Load {
    balance: Arc<Balance>,
    thread: usize,
}

impl Drop for Load {
    fn drop(&mut self) {
        if let Some(load) = self.balance.loads.get(self.thread) {
            load.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Balance {
    /// A balance for `threads` threads, and each thread's inbox, in order.
    pub fn new(threads: usize) -> (Arc<Self>, Vec<UnboundedReceiver<Handoff>>) {
        let (inboxes, receivers) = (0..threads.max(1)).map(|_| unbounded_channel()).unzip();
        let balance = Self {
            loads: (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            inboxes,
        };
        (Arc::new(balance), receivers)
    }

    /// Counts one more connection on `thread`.
    fn count(self: &Arc<Self>, thread: usize) -> Load {
        if let Some(load) = self.loads.get(thread) {
            load.fetch_add(1, Ordering::Relaxed);
        }
        Load {
            balance: self.clone(),
            thread,
        }
    }

    fn loads(&self) -> Vec<usize> {
        self.loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }
}

/// The thread a connection accepted on thread `me` should be served on,
/// given every thread's connection count: `me`, unless it serves at least
/// [`SLACK`] more than the least loaded thread (the first such, on a tie).
pub fn destination(loads: &[usize], me: usize) -> usize {
    let mine = loads.get(me).copied().unwrap_or(0);
    match loads.iter().enumerate().min_by_key(|(_, l)| **l) {
        Some((least, &load)) if mine >= load + SLACK => least,
        _ => me,
    }
}

impl Lane {
    /// Serves a connection accepted on this thread here, or hands it on to
    /// the least loaded thread; should that fail (the thread has stopped),
    /// it is served here after all.
    pub fn place(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        conns: &Conns,
    ) {
        let to = destination(&self.balance.loads(), self.me);
        if to == self.me {
            return conns.serve(stream, peer, slot, Some(self.balance.count(self.me)));
        }
        let std = match stream.into_std() {
            Ok(std) => std,
            Err(e) => return tracing::debug!(%peer, error = %e, "cannot hand a connection on"),
        };
        let handoff = Handoff {
            stream: std,
            peer,
            slot,
            load: Some(self.balance.count(to)),
        };
        let Some(inbox) = self.balance.inboxes.get(to) else {
            return;
        };
        if let Err(back) = inbox.send(handoff) {
            // That thread has stopped (or never started): never again.
            if let Some(load) = self.balance.loads.get(to) {
                load.store(usize::MAX / 2, Ordering::Relaxed);
            }
            let Handoff {
                stream, peer, slot, ..
            } = back.0;
            match TcpStream::from_std(stream) {
                Ok(stream) => conns.serve(stream, peer, slot, Some(self.balance.count(self.me))),
                Err(e) => tracing::debug!(%peer, error = %e, "cannot serve a connection"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_connection_until_it_serves_slack_more_than_another() {
        assert_eq!(destination(&[0, 0], 0), 0);
        assert_eq!(destination(&[1, 0], 0), 0, "within the slack");
        assert_eq!(destination(&[2, 0], 0), 1);
        assert_eq!(destination(&[40, 0], 0), 1);
        assert_eq!(destination(&[5, 3, 1], 1), 2);
        assert_eq!(destination(&[5, 3, 1], 2), 2, "the least loaded keeps it");
        assert_eq!(destination(&[4, 1, 1], 0), 1, "the first of a tie");
        assert_eq!(destination(&[3], 0), 0, "one thread");
    }

    #[test]
    fn a_burst_accepted_on_one_thread_ends_up_spread_over_all() {
        let (balance, _inboxes) = Balance::new(3);
        // Every connection is accepted on thread 0, as in a burst.
        let kept: Vec<Load> = (0..60)
            .map(|_| balance.count(destination(&balance.loads(), 0)))
            .collect();
        let loads = balance.loads();
        assert_eq!(loads.iter().sum::<usize>(), 60);
        let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
        assert!(max - min <= SLACK, "{loads:?}");
        drop(kept);
        assert_eq!(
            balance.loads(),
            [0, 0, 0],
            "closed connections are uncounted"
        );
    }
}
