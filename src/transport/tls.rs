//! TLS over any socket, with rustls (cargo feature `tls`).
//!
//! The session runs on [`SockIo`], an owner-side view of the member's shared socket, so the
//! pool keeps its own handle on the file descriptor for the peek and the idle watch. The
//! clean-return bookkeeping sits above this layer (`member::io`), where it sees the caller's
//! own reads and writes: TLS reads ahead, and its reads must not look like the caller's.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::socket::{SockIo, Socket};

/// What [`Builder::tls`](crate::Builder::tls) configured: the client configuration and the
/// name the server's certificate must carry.
#[derive(Clone)]
pub(crate) struct TlsSettings {
    pub(crate) config: Arc<ClientConfig>,
    pub(crate) server_name: ServerName<'static>,
}

impl TlsSettings {
    pub(crate) fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<Self, String> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| format!("{server_name:?} is not a valid server name: {e}"))?;
        Ok(TlsSettings {
            config,
            server_name,
        })
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The client configuration may hold a client key: print only the name.
        f.debug_struct("TlsSettings")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Whether a failed handshake was this client's configuration not matching the server's
/// certificate (the name, the roots, the certificate's validity): the server answered, so
/// the endpoint is up; see `Error::is_config`.
pub(crate) fn is_config_error(e: &io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::InvalidCertificate(_))
    )
}

/// Runs the client handshake on a connected socket.
pub(crate) async fn handshake(
    sock: Arc<Socket>,
    tls: &TlsSettings,
) -> io::Result<Box<TlsStream<SockIo>>> {
    let connector = TlsConnector::from(tls.config.clone());
    let stream = connector
        .connect(tls.server_name.clone(), SockIo(sock))
        .await?;
    Ok(Box::new(stream))
}
