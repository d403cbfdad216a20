//! Counting S3's throttling answers, including those the SDK retries by itself: how a mount
//! learns that the fleet's request rate on its prefix is too high.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;

/// The number of throttling answers (`503`, `429`) one store's requests got, every attempt
/// counted. Cheap to clone; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Throttles(Arc<AtomicU64>);

impl Throttles {
    /// Throttling answers so far.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts an answer with HTTP `status` if it is a throttling one.
    pub fn observe(&self, status: u16) {
        if matches!(status, 429 | 503) {
            self.0.fetch_add(1, Ordering::Relaxed);
            crate::metrics::metrics().s3_throttled();
        }
    }
}

impl Intercept for Throttles {
    fn name(&self) -> &'static str {
        "modelfs-throttles"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.observe(context.response().status().as_u16());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_throttling_answers_only() {
        let throttles = Throttles::default();
        let shared = throttles.clone();
        for status in [200, 206, 404, 500, 503, 429, 503] {
            throttles.observe(status);
        }
        assert_eq!(shared.count(), 3);
    }
}
