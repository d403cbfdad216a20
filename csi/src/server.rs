//! The gRPC server on a Unix socket: endpoint parsing, stale-socket removal, and a graceful
//! stop on SIGTERM/SIGINT that leaves every mount in place.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::identity::IdentityService;
use crate::mounter::Mounter;
use crate::node::{NodeServer, NodeService};
use crate::proto::identity_server::IdentityServer;
use crate::proto::node_server::NodeServer as NodeGrpcServer;

/// The socket could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The endpoint is not `unix:///absolute/path`.
    #[error("endpoint {0:?} is not unix:///ABSOLUTE/PATH")]
    BadEndpoint(String),
    /// Something other than a socket is in the way, or a live server already listens.
    #[error("cannot use {path}: {reason}")]
    SocketInUse {
        /// The socket path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Creating, removing or binding the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// The socket path of a `unix:///path` (or `unix:/path`) endpoint.
pub fn socket_path(endpoint: &str) -> Result<PathBuf, ServerError> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .ok_or_else(|| ServerError::BadEndpoint(endpoint.to_string()))?;
    let path = PathBuf::from(path);
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(ServerError::BadEndpoint(endpoint.to_string()));
    }
    Ok(path)
}

/// Binds `path`, creating its directory and removing a socket left by a previous run. Refuses
/// to replace a non-socket file or a socket some process still accepts connections on.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::FileTypeExt;
    let listen_err = |source| ServerError::Listen {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::SocketInUse {
                    path: path.to_path_buf(),
                    reason: "another process is listening on it".to_string(),
                });
            }
            tracing::info!("removing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(listen_err)?;
        }
        Ok(_) => {
            return Err(ServerError::SocketInUse {
                path: path.to_path_buf(),
                reason: "it exists and is not a socket".to_string(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    UnixListener::bind(path).map_err(listen_err)
}

/// Serves the Identity and Node services on `listener` until `shutdown` completes. Mounts are
/// deliberately left alone when the server stops: their daemons run on their own, and a
/// restarted plugin picks them up again.
pub async fn serve<M: Mounter>(
    listener: UnixListener,
    node: Arc<NodeServer<M>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let ready_node = node.clone();
    let identity = IdentityService::new(Arc::new(move || ready_node.is_ready()));
    tonic::transport::Server::builder()
        .add_service(IdentityServer::new(identity))
        .add_service(NodeGrpcServer::new(NodeService::new(node)))
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop the plugin with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("signal received: stopping (mounts stay in place)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_absolute_unix_paths() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("unix:/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        for bad in [
            "tcp://0.0.0.0:1000",
            "unix://csi.sock",
            "/csi/csi.sock",
            "unix:///",
        ] {
            assert!(socket_path(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn stale_sockets_are_replaced_but_live_ones_and_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/csi.sock");
        let first = bind(&path).unwrap();
        // Live: someone accepts on it.
        assert!(matches!(bind(&path), Err(ServerError::SocketInUse { .. })));
        drop(first);
        // Stale: the file is left but nobody listens.
        assert!(path.exists());
        let _second = bind(&path).unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(bind(&file), Err(ServerError::SocketInUse { .. })));
    }
}
