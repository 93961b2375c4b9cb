//! An iterator mapped on worker threads, its results handed out in the source's order, with
//! memory bounded: each worker holds at most one item waiting and one result unread.
//!
//! Item `i` goes to worker `i mod n` and its result is read back from that worker in turn, so
//! order is kept without a reordering buffer. Dropping the map stops every thread and waits
//! for it.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A worker's result, or the panic that stopped it (raised again in the consumer, so that a
/// worker's bug never reads as the end of the source).
type Outcome<O> = std::thread::Result<O>;

pub(super) struct OrderedMap<O> {
    results: Vec<Receiver<Outcome<O>>>,
    next: usize,
    threads: Vec<JoinHandle<()>>,
}

impl<O: Send + 'static> OrderedMap<O> {
    /// Pulls `source` on a thread of its own and maps its items on `workers` threads.
    pub fn spawn<I, F>(name: &str, source: I, workers: usize, map: F) -> std::io::Result<Self>
    where
        I: Iterator + Send + 'static,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> O + Send + Sync + 'static,
    {
        let workers = workers.max(1);
        let map = Arc::new(map);
        let mut inputs = Vec::with_capacity(workers);
        let mut results = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers + 1);
        for worker in 0..workers {
            let (send_item, items) = sync_channel::<I::Item>(1);
            let (send_result, received) = sync_channel::<Outcome<O>>(1);
            let map = map.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{worker}"))
                    .spawn(move || {
                        for item in items {
                            let outcome =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| map(item)));
                            let panicked = outcome.is_err();
                            // The consumer is gone: stop.
                            if send_result.send(outcome).is_err() || panicked {
                                return;
                            }
                        }
                    })?,
            );
            inputs.push(send_item);
            results.push(received);
        }
        threads.push(
            std::thread::Builder::new()
                .name(format!("{name}-read"))
                .spawn(move || {
                    for (index, item) in source.enumerate() {
                        // A worker gone means the consumer is gone: stop.
                        if inputs[index % inputs.len()].send(item).is_err() {
                            return;
                        }
                    }
                })?,
        );
        Ok(OrderedMap {
            results,
            next: 0,
            threads,
        })
    }
}

impl<O> Iterator for OrderedMap<O> {
    type Item = O;

    fn next(&mut self) -> Option<O> {
        // The worker whose turn it is has hung up only once the source is exhausted.
        let outcome = self.results.get(self.next)?.recv().ok()?;
        self.next = (self.next + 1) % self.results.len();
        Some(outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    }
}

impl<O> Drop for OrderedMap<O> {
    fn drop(&mut self) {
        // Without receivers every worker's next send fails, and then the reader's.
        self.results.clear();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_in_source_order_whatever_the_workers() {
        for workers in [1, 2, 3, 7] {
            let mapped: Vec<u64> = OrderedMap::spawn("test", 0..1000u64, workers, |x| {
                // Uneven work, so workers finish out of turn.
                std::thread::sleep(std::time::Duration::from_micros(x % 7));
                x * x
            })
            .unwrap()
            .collect();
            assert_eq!(
                mapped,
                (0..1000u64).map(|x| x * x).collect::<Vec<_>>(),
                "{workers} workers"
            );
        }
    }

    #[test]
    fn a_worker_that_panics_panics_its_consumer_rather_than_ending_the_source() {
        let caught = std::panic::catch_unwind(|| {
            OrderedMap::spawn("test", 0..100u64, 2, |x| {
                assert!(x != 41, "a bug at item 41");
                x
            })
            .unwrap()
            .count()
        });
        assert!(caught.is_err(), "the panic was seen as the end: {caught:?}");
    }

    #[test]
    fn dropping_it_early_stops_every_thread() {
        let mut map = OrderedMap::spawn("test", 0..u64::MAX, 2, |x| x + 1).unwrap();
        assert_eq!(map.next(), Some(1));
        assert_eq!(map.next(), Some(2));
        // Returns only once the reader and both workers have stopped.
        drop(map);
    }
}
