//! A gRPC channel to a plugin's Unix socket, as kubelet and the sidecars open one, and the
//! volume capability kubelet sends with a mount; for tests and tools.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use crate::proto::VolumeCapability;

/// Deadline of every call on a channel from [`connect`]: longer than a slow mount
/// ([`crate::mounter::MOUNT_TIMEOUT`]), so callers fail instead of hanging.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// Connects to the plugin listening on `socket`.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is required by the API but unused: every connection goes to the socket.
    Endpoint::from_static("http://[::1]:50051")
        .timeout(CALL_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// A filesystem-mount capability in access `mode` with `mount_flags` (a PV's `mountOptions`),
/// as kubelet puts it in a NodePublishVolume request.
pub fn mount_capability(mode: Mode, mount_flags: Vec<String>) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume {
            mount_flags,
            ..MountVolume::default()
        })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}
