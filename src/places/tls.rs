//! The TLS exchange with Places: the one module that names rustls types.
//!
//! rustls is itself sans-IO: it takes TLS records in and hands them out, and the reactor moves
//! them between it and a non-blocking socket. Certificate checks and SNI are always on.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Largest `places.ca_file` read: Mozilla's whole root store as PEM is about 250 KB.
const MAX_CA_FILE: u64 = 4 << 20;

/// Trust settings shared by every Places connection.
#[derive(Clone)]
pub struct TlsConfig(Arc<ClientConfig>);

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfig")
    }
}

impl TlsConfig {
    /// Mozilla's roots, plus the PEM certificates in `ca_file` if given; the ring provider
    /// passed explicitly; TLS 1.2 and 1.3; ALPN `http/1.1`.
    pub fn new(ca_file: Option<&Path>) -> Result<Self, String> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = ca_file {
            // A device or a FIFO there would be read until memory runs out, or block start-up.
            let meta = std::fs::metadata(path)
                .map_err(|e| format!("cannot read places.ca_file {}: {e}", path.display()))?;
            if !meta.is_file() {
                return Err(format!("places.ca_file {} is not a regular file", path.display()));
            }
            if meta.len() > MAX_CA_FILE {
                return Err(format!(
                    "places.ca_file {} is {} bytes, more than the {MAX_CA_FILE} a file of certificates needs",
                    path.display(),
                    meta.len()
                ));
            }
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read places.ca_file {}: {e}", path.display()))?;
            let mut added = 0;
            for cert in certs {
                let cert = cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots.add(cert).map_err(|e| format!("unusable certificate in {}: {e}", path.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("places.ca_file {} holds no certificate", path.display()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(Arc::new(config)))
    }
}

/// One TLS session over one socket.
pub struct TlsSession {
    conn: ClientConnection,
}

impl TlsSession {
    /// A client session for `host`, which is both the SNI name and the name the certificate
    /// must carry (an IP address is checked against the certificate's IP SANs).
    pub fn new(config: &TlsConfig, host: &str) -> Result<Self, String> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("bad TLS server name {host:?}: {e}"))?;
        let conn =
            ClientConnection::new(Arc::clone(&config.0), name).map_err(|e| format!("TLS set-up: {e}"))?;
        Ok(Self { conn })
    }

    /// Queues plaintext to send; rustls holds it until the handshake is done.
    pub fn send(&mut self, plaintext: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(plaintext)
    }

    /// Whether TLS records are waiting to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes queued TLS records to `socket`; `WouldBlock` passes through.
    pub fn write_to(&mut self, socket: &mut impl Write) -> io::Result<usize> {
        self.conn.write_tls(socket)
    }

    /// Reads one batch of TLS records from `socket`, decrypts them, and appends the plaintext
    /// they carried to `plain`. Returns true once the stream has ended: the server closed the
    /// TLS session cleanly (close_notify) or the socket reached end of stream.
    ///
    /// Plaintext is taken out after every batch, never left in the session: rustls holds at
    /// most about 16 KiB of received plaintext and refuses to read more records until it is
    /// taken ("received plaintext buffer full"), so a caller that read records until
    /// `WouldBlock` before taking plaintext failed on any answer larger than that arriving in
    /// one burst. Call this until it returns `WouldBlock` (which passes through) or true,
    /// handing `plain` on after each call, so the response reader's limits apply as bytes
    /// arrive. A TLS failure (a bad certificate, say) is `InvalidData`.
    pub fn read_step(&mut self, socket: &mut impl Read, plain: &mut Vec<u8>) -> io::Result<bool> {
        let n = self.conn.read_tls(socket)?;
        self.conn
            .process_new_packets()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}")))?;
        let closed = self.receive(plain).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(closed || n == 0)
    }

    /// Appends the plaintext received so far to `out`. Returns true once the server closed the
    /// TLS session cleanly (close_notify).
    fn receive(&mut self, out: &mut Vec<u8>) -> Result<bool, String> {
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(format!("TLS: {e}")),
            }
        }
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_that_is_not_a_regular_file_or_too_large_is_refused_at_once() {
        let e = TlsConfig::new(Some(Path::new("/dev/zero"))).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = std::env::temp_dir().join(format!("herd-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.pem");
        std::fs::File::create(&big).unwrap().set_len(MAX_CA_FILE + 1).unwrap();
        let e = TlsConfig::new(Some(&big)).unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let fifo = dir.join("fifo.pem");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo (coreutils)");
        assert!(made.success(), "mkfifo {}", fifo.display());
        // Opening a FIFO would block until a writer came: it must be refused before that.
        let e = TlsConfig::new(Some(&fifo)).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
