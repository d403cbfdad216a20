//! Request counters kept by the service, so tests can assert what reached the server.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the server's request counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// GetObject requests (including failed and conditional ones).
    pub get_object: u64,
    /// HeadObject requests.
    pub head_object: u64,
    /// ListObjectsV2 requests.
    pub list_objects_v2: u64,
    /// PutObject requests.
    pub put_object: u64,
    /// Every other operation that reached the store (buckets, deletes, …).
    pub other: u64,
    /// Body bytes produced by GetObject responses.
    pub bytes_sent: u64,
    /// GetObject/HeadObject requests answered 412 Precondition Failed.
    pub precondition_failed: u64,
}

/// One counter per field of [`RequestStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub get_object: AtomicU64,
    pub head_object: AtomicU64,
    pub list_objects_v2: AtomicU64,
    pub put_object: AtomicU64,
    pub other: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub precondition_failed: AtomicU64,
}

impl Counters {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    fn fields(&self) -> [&AtomicU64; 7] {
        [
            &self.get_object,
            &self.head_object,
            &self.list_objects_v2,
            &self.put_object,
            &self.other,
            &self.bytes_sent,
            &self.precondition_failed,
        ]
    }

    /// The current values.
    pub fn snapshot(&self) -> RequestStats {
        let [get_object, head_object, list_objects_v2, put_object, other, bytes_sent, precondition_failed] =
            self.fields().map(|c| c.load(Ordering::Relaxed));
        RequestStats {
            get_object,
            head_object,
            list_objects_v2,
            put_object,
            other,
            bytes_sent,
            precondition_failed,
        }
    }

    /// Sets every counter to zero.
    pub fn reset(&self) {
        for counter in self.fields() {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_reset() {
        let counters = Counters::default();
        Counters::bump(&counters.get_object);
        Counters::add(&counters.bytes_sent, 10);
        Counters::bump(&counters.precondition_failed);
        let stats = counters.snapshot();
        assert_eq!(stats.get_object, 1);
        assert_eq!(stats.bytes_sent, 10);
        assert_eq!(stats.precondition_failed, 1);
        assert_eq!(stats.head_object, 0);
        counters.reset();
        assert_eq!(counters.snapshot(), RequestStats::default());
    }
}
