//! The node mounter's socket: how the plugin hands a mounted FUSE connection to the
//! long-lived `modelfs mounter` process, and how that process reads it.
//!
//! One request per connection on a `SOCK_SEQPACKET` Unix socket, so a message and the file
//! descriptor it carries (SCM_RIGHTS) arrive together and whole: a JSON [`Request`], then a
//! JSON [`Reply`]. The mounter only talks to peers running as its own user (root on a node),
//! checked with `SO_PEERCRED`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use modelfs_fs::store::SessionCredentials;

use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, recvmsg, sendmsg, setsockopt, socket, sockopt,
    AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use serde::{Deserialize, Serialize};

/// Largest message either side sends.
const MAX_MESSAGE: usize = 64 << 10;

/// What the plugin asks the mounter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Are you there? Answered [`Reply::Ok`] at once.
    Ping,
    /// Serve the FUSE connection attached to this message (already mounted at `target`).
    Serve(VolumeHandoff),
    /// Sign the requests of the volume mounted at `target` with new credentials.
    Refresh {
        /// The volume's target, as in its [`VolumeHandoff`].
        target: PathBuf,
        /// The new credentials.
        credentials: VolumeCredentials,
    },
}

/// One volume handed to the mounter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeHandoff {
    /// The CSI volume id, for the mounter's log lines.
    pub volume_id: String,
    /// Where the connection is mounted (for logs and the FUSE session's name).
    pub target: PathBuf,
    /// `s3://BUCKET/PREFIX/`.
    pub source: String,
    /// The volume's `modelfs mount` options (validated by the plugin, checked again there).
    pub options: Vec<String>,
    /// The pod's credentials (`authenticationSource: pod`); `None`: the mounter's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<VolumeCredentials>,
    /// Paths or globs to download into the node's cache once the volume is served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm: Vec<String>,
    /// Files to download too, each the first of its candidate paths that exists (the
    /// models a workflow loads, which may live in one of several folders).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm_any: Vec<Vec<String>>,
    /// How long the reply waits for that download, in milliseconds (it goes on after).
    #[serde(default)]
    pub warm_wait_ms: u64,
}

/// Temporary credentials for one volume, as they travel over the socket.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCredentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// The session token.
    pub session_token: String,
    /// When they expire, in seconds since the Unix epoch.
    pub expires_unix: u64,
}

impl VolumeCredentials {
    /// When they expire.
    pub fn expires(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires_unix)
    }

    /// The same credentials as the S3 store takes them.
    pub fn to_session(&self) -> SessionCredentials {
        SessionCredentials {
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
            expires: self.expires(),
        }
    }
}

impl std::fmt::Debug for VolumeCredentials {
    // The secret and the token never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_session().fmt(f)
    }
}

/// The mounter's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Done: the volume is being served.
    Ok,
    /// Refused or failed; the message says why.
    Failed(String),
    /// Served, with files to warm: how far warming got by the time of the reply. Only sent
    /// for a handoff that asked for warming (plugins that predate it never do).
    Warm(WarmOutcome),
}

/// How far a volume's warming got by the time its handoff was answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmOutcome {
    /// Every file is local.
    pub done: bool,
    /// What to tell the pod, e.g. "warmed 3 files, 6144 MiB in 41.2 s".
    pub message: String,
}

/// Talking to the mounter failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    /// The socket could not be reached or the exchange broke off.
    #[error("node mounter at {socket}: {source}")]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The mounter answered that it could not serve the volume.
    #[error("{0}")]
    Refused(String),
    /// A message was not understood.
    #[error("node mounter at {socket}: bad message: {message}")]
    Protocol {
        /// The socket path.
        socket: PathBuf,
        /// What was wrong.
        message: String,
    },
}

fn io_error(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// A connection from the plugin to the mounter at `socket`.
#[derive(Debug, Clone)]
pub struct MounterClient {
    socket: PathBuf,
    timeout: Duration,
}

impl MounterClient {
    /// A client of the mounter listening at `socket`; every exchange gives up after
    /// `timeout`.
    pub fn new(socket: PathBuf, timeout: Duration) -> MounterClient {
        MounterClient { socket, timeout }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether the mounter answers.
    pub fn ping(&self) -> Result<(), HandoffError> {
        self.exchange(&Request::Ping, None).map(drop)
    }

    /// Hands `fuse` (a mounted `/dev/fuse` connection) to the mounter and waits until it
    /// serves it (and, for a volume with files to warm, until they are local or its wait is
    /// over) or says why not.
    pub fn serve(
        &self,
        volume: VolumeHandoff,
        fuse: BorrowedFd<'_>,
    ) -> Result<Option<WarmOutcome>, HandoffError> {
        self.exchange(&Request::Serve(volume), Some(fuse))
    }

    /// Replaces the credentials of the volume served at `target`.
    pub fn refresh(
        &self,
        target: &Path,
        credentials: VolumeCredentials,
    ) -> Result<(), HandoffError> {
        let request = Request::Refresh {
            target: target.to_path_buf(),
            credentials,
        };
        self.exchange(&request, None).map(drop)
    }

    fn exchange(
        &self,
        request: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Option<WarmOutcome>, HandoffError> {
        let io = |source: std::io::Error| HandoffError::Io {
            socket: self.socket.clone(),
            source,
        };
        let conn = connect_to(&self.socket, self.timeout).map_err(io)?;
        let body = serde_json::to_vec(request).map_err(|e| HandoffError::Protocol {
            socket: self.socket.clone(),
            message: e.to_string(),
        })?;
        send_message(conn.as_fd(), &body, fd).map_err(io)?;
        let (reply, _) = receive_message(conn.as_fd()).map_err(io)?;
        match serde_json::from_slice::<Reply>(&reply) {
            Ok(Reply::Ok) => Ok(None),
            Ok(Reply::Warm(outcome)) => Ok(Some(outcome)),
            Ok(Reply::Failed(message)) => Err(HandoffError::Refused(message)),
            Err(e) => Err(HandoffError::Protocol {
                socket: self.socket.clone(),
                message: e.to_string(),
            }),
        }
    }
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io_error)
}

fn connect_to(path: &Path, timeout: Duration) -> std::io::Result<OwnedFd> {
    let fd = seqpacket()?;
    let tv = nix::sys::time::TimeVal::new(
        i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
        i64::from(timeout.subsec_micros()),
    );
    setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(io_error)?;
    setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(io_error)?;
    let addr = UnixAddr::new(path).map_err(io_error)?;
    connect(fd.as_raw_fd(), &addr).map_err(io_error)?;
    Ok(fd)
}

/// Sends one message, with `fd` attached when given.
pub fn send_message(
    conn: BorrowedFd<'_>,
    body: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    if body.len() > MAX_MESSAGE {
        return Err(std::io::Error::other("message too large"));
    }
    let iov = [IoSlice::new(body)];
    let fds: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    sendmsg::<()>(conn.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(io_error)?;
    Ok(())
}

/// Receives one message and the descriptor it carries, if any. Extra descriptors are closed.
pub fn receive_message(conn: BorrowedFd<'_>) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut body = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (len, received) = {
        let mut iov = [IoSliceMut::new(&mut body)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io_error)?;
        let mut received = Vec::new();
        for message in msg.cmsgs().map_err(io_error)? {
            if let ControlMessageOwned::ScmRights(fds) = message {
                // SAFETY: the kernel just installed these descriptors in this process for us;
                // nothing else owns them.
                received.extend(
                    fds.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_TRUNC) || msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            return Err(std::io::Error::other("message truncated"));
        }
        (msg.bytes, received)
    };
    if len == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
    }
    body.truncate(len);
    let mut received = received.into_iter();
    Ok((body, received.next()))
}

/// The mounter's listening socket.
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
    path: PathBuf,
}

impl Listener {
    /// Listens at `path`, whose directory must exist, belong to this user and be writable by
    /// no one else (the socket hands out FUSE sessions). A socket left by an earlier run is
    /// replaced; any other file there is an error. The socket is made mode 0600.
    pub fn bind(path: &Path) -> std::io::Result<Listener> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let dir = path
            .parent()
            .ok_or_else(|| std::io::Error::other("the socket path has no directory"))?;
        let meta = std::fs::symlink_metadata(dir)?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
            return Err(std::io::Error::other(format!(
                "{} must be a directory owned by uid {me} and writable by no one else",
                dir.display()
            )));
        }
        match std::fs::symlink_metadata(path) {
            Ok(old) if old.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not a socket",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let fd = seqpacket()?;
        let addr = UnixAddr::new(path).map_err(io_error)?;
        bind(fd.as_raw_fd(), &addr).map_err(io_error)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listen(&fd, Backlog::new(64).map_err(io_error)?).map_err(io_error)?;
        Ok(Listener {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for the next connection from a peer running as this user; others are closed.
    pub fn accept(&self) -> std::io::Result<OwnedFd> {
        loop {
            let raw = accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map_err(io_error)?;
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let conn = unsafe { OwnedFd::from_raw_fd(raw) };
            let peer = getsockopt(&conn, sockopt::PeerCredentials).map_err(io_error)?;
            // SAFETY: geteuid has no preconditions.
            if peer.uid() == unsafe { libc::geteuid() } {
                return Ok(conn);
            }
            tracing::warn!(
                "refused a connection from uid {} pid {} (only uid {} may hand over volumes)",
                peer.uid(),
                peer.pid(),
                // SAFETY: as above.
                unsafe { libc::geteuid() }
            );
        }
    }
}

/// Reads one request (and its descriptor) from an accepted connection.
pub fn read_request(conn: BorrowedFd<'_>) -> std::io::Result<(Request, Option<OwnedFd>)> {
    let (body, fd) = receive_message(conn)?;
    let request = serde_json::from_slice(&body)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok((request, fd))
}

/// Answers a request.
pub fn write_reply(conn: BorrowedFd<'_>, reply: &Reply) -> std::io::Result<()> {
    let body = serde_json::to_vec(reply).map_err(std::io::Error::other)?;
    send_message(conn, &body, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_descriptor_travels_with_its_request_and_the_reply_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let listener = Listener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let conn = listener.accept().unwrap();
            let (request, fd) = read_request(conn.as_fd()).unwrap();
            let Request::Serve(volume) = request else {
                panic!("expected Serve")
            };
            let credentials = volume.credentials.as_ref().expect("credentials");
            assert_eq!(credentials.access_key_id, "ASIAKEY");
            assert_eq!(credentials.session_token, "the-token");
            let mut file = std::fs::File::from(fd.expect("a descriptor"));
            let mut text = String::new();
            std::io::Read::read_to_string(&mut file, &mut text).unwrap();
            write_reply(
                conn.as_fd(),
                &Reply::Failed(format!("{} {text}", volume.volume_id)),
            )
            .unwrap();
        });
        let carried = dir.path().join("carried");
        std::fs::write(&carried, "through the socket").unwrap();
        let file = std::fs::File::open(&carried).unwrap();
        let client = MounterClient::new(path, Duration::from_secs(5));
        let err = client
            .serve(
                VolumeHandoff {
                    volume_id: "vol-1".into(),
                    target: "/t".into(),
                    source: "s3://b/".into(),
                    options: vec![],
                    credentials: Some(credentials()),
                    warm: vec![],
                    warm_any: vec![],
                    warm_wait_ms: 0,
                },
                file.as_fd(),
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "vol-1 through the socket");
        server.join().unwrap();
    }

    fn credentials() -> VolumeCredentials {
        VolumeCredentials {
            access_key_id: "ASIAKEY".into(),
            secret_access_key: "the-secret".into(),
            session_token: "the-token".into(),
            expires_unix: 2_000_000_000,
        }
    }

    #[test]
    fn requests_print_without_secrets_and_old_handoffs_carry_none() {
        let request = Request::Refresh {
            target: "/t".into(),
            credentials: credentials(),
        };
        let text = format!("{request:?}");
        assert!(text.contains("ASIAKEY"), "{text}");
        assert!(
            !text.contains("the-secret") && !text.contains("the-token"),
            "{text}"
        );
        let old = r#"{"Serve":{"volume_id":"v","target":"/t","source":"s3://b/","options":[]}}"#;
        let Request::Serve(volume) = serde_json::from_str(old).unwrap() else {
            panic!("expected Serve")
        };
        assert_eq!(volume.credentials, None);
    }

    #[test]
    fn a_socket_in_a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = Listener::bind(&dir.path().join("m.sock")).unwrap_err();
        assert!(err.to_string().contains("writable by no one else"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.path().join("m.sock"), "a planted file").unwrap();
        let err = Listener::bind(&dir.path().join("m.sock")).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }

    #[test]
    fn a_missing_mounter_is_an_io_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let client = MounterClient::new(dir.path().join("none.sock"), Duration::from_secs(1));
        let err = client.ping().unwrap_err();
        assert!(matches!(err, HandoffError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("none.sock"), "{err}");
    }
}
