//! systemd readiness: with `Type=notify`, systemd starts units ordered after the mount only
//! once modelfs sends `READY=1` to `$NOTIFY_SOCKET`.

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd if it is listening; a no-op otherwise.
pub fn notify(state: &str) {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = notify_to(&socket, state) {
            tracing::warn!("cannot notify systemd ({e})");
        }
    }
}

/// Sends `state` to `socket`: a path, or an abstract name written `@name` (as systemd does).
fn notify_to(socket: &OsStr, state: &str) -> std::io::Result<()> {
    let sender = UnixDatagram::unbound()?;
    let bytes = socket.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sender.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sender.send_to(state.as_bytes(), socket)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::linux::net::SocketAddrExt;

    use super::*;

    fn received(listener: &UnixDatagram) -> Vec<u8> {
        let mut buf = [0u8; 32];
        let n = listener.recv(&mut buf).expect("recv");
        buf[..n].to_vec()
    }

    #[test]
    fn sends_ready_to_the_notify_socket() {
        let listener = tempfile::Builder::new()
            .make(|path| UnixDatagram::bind(path))
            .expect("bind");
        // SAFETY: this test is the only code in its process reading NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", listener.path()) };
        notify("READY=1");
        assert_eq!(received(listener.as_file()), b"READY=1");
    }

    #[test]
    fn an_at_sign_names_an_abstract_socket() {
        let name = format!("modelfs-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract address");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        notify_to(OsStr::new(&format!("@{name}")), "READY=1").expect("notify");
        assert_eq!(received(&listener), b"READY=1");
        // Not a path of that name: nothing listens there.
        assert!(notify_to(OsStr::new(&name), "READY=1").is_err());
    }
}
