//! The CSI Identity service: the plugin's name and version, its (node-only) capabilities,
//! and readiness.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto;

/// The plugin's name, as the CSIDriver object and the PV `spec.csi.driver` spell it.
pub const DRIVER_NAME: &str = "s3.modelfs.io";

/// The plugin's version (the crate version).
pub const DRIVER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Serves GetPluginInfo, GetPluginCapabilities and Probe.
pub struct IdentityService {
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl IdentityService {
    /// An Identity service whose Probe reports `ready()`.
    pub fn new(ready: Arc<dyn Fn() -> bool + Send + Sync>) -> IdentityService {
        IdentityService { ready }
    }
}

#[tonic::async_trait]
impl proto::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: DRIVER_NAME.to_string(),
            vendor_version: DRIVER_VERSION.to_string(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        // A node-only plugin: no controller service, no topology constraints (any node can
        // reach S3), no expansion.
        Ok(Response::new(proto::GetPluginCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn probe(
        &self,
        _request: Request<proto::ProbeRequest>,
    ) -> Result<Response<proto::ProbeResponse>, Status> {
        Ok(Response::new(proto::ProbeResponse {
            ready: Some((self.ready)()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name rule of the CSI spec: `^[a-zA-Z][A-Za-z0-9-._]{0,61}[a-zA-Z]$` (as the issue
    /// states it), 63 characters at most.
    #[test]
    fn driver_name_follows_the_spec() {
        let chars: Vec<char> = DRIVER_NAME.chars().collect();
        assert!(chars.len() >= 2 && chars.len() <= 63);
        assert!(chars[0].is_ascii_alphabetic());
        assert!(chars[chars.len() - 1].is_ascii_alphabetic());
        assert!(chars
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')));
    }
}
