//! systemd readiness: with `Type=notify`, systemd starts units ordered after the mount only
//! once modelfs sends `READY=1` to `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd if it is listening; a no-op otherwise.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(socket) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| socket.send_to_addr(state.as_bytes(), &addr))
    } else {
        socket.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({e})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_to_the_notify_socket() {
        let listener = tempfile::Builder::new()
            .make(|path| UnixDatagram::bind(path))
            .unwrap();
        // SAFETY: this test is the only code in its process reading NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", listener.path()) };
        notify("READY=1");
        let mut buf = [0u8; 32];
        let n = listener.as_file().recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }
}
