//! Test TLS material: a self-signed certificate for `localhost` and 127.0.0.1 (made with
//! rcgen), its PEM files in a temporary directory (removed on drop), and rustls client and
//! server configurations that trust exactly that certificate. Every config is built with
//! the ring provider explicitly, so no process-wide provider needs installing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate and its key, as DER and as PEM files on disk.
pub struct TestCerts {
    dir: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCerts {
    /// Makes a fresh certificate for `localhost` and 127.0.0.1 and writes `cert.pem` and
    /// `key.pem` to a new, unique temporary directory.
    pub fn new() -> TestCerts {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".into()])
                .expect("generate a self-signed certificate");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "livepool-tls-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        std::fs::write(&cert_path, cert.pem()).expect("write cert.pem");
        std::fs::write(&key_path, key_pair.serialize_pem()).expect("write key.pem");
        TestCerts {
            dir,
            cert_path,
            key_path,
            cert_der: cert.der().clone(),
            key_der: key_pair.serialize_der(),
        }
    }

    /// The directory holding the PEM files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate, PEM.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The private key (PKCS#8), PEM.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// A client configuration that trusts exactly this certificate (and nothing else).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.cert_der.clone())
            .expect("add the test certificate as a root");
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    /// A server configuration presenting this certificate, with rustls' default ticket
    /// setting (so TLS 1.3 session tickets are sent after the handshake).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_no_client_auth()
                .with_single_cert(vec![self.cert_der.clone()], key)
                .expect("the test certificate and key match"),
        )
    }

    /// A connector with [`client_config`](Self::client_config).
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client_config())
    }

    /// An acceptor with [`server_config`](Self::server_config).
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config())
    }

    /// Connects to `addr` over TCP and completes a TLS handshake for `localhost`.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from("localhost").expect("valid server name");
        self.connector().connect(name, tcp).await
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        TestCerts::new()
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
