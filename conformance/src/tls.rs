//! TLS for the transport tests: certificate authorities made with the
//! `openssl` command, and a TLS front that terminates TLS with a server
//! certificate one of them signed, forwarding the plaintext to the fault
//! proxy, so that the proxy's faults still reach the link.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, ensure};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    },
};

/// A certificate authority in a directory of its own: `ca.crt` and
/// `ca.key`, and the server certificates it signed.
pub struct Authority {
    dir: PathBuf,
}

impl Authority {
    /// A new CA, valid for a day, in `dir` (made).
    pub async fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        openssl(
            dir,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout ca.key -out ca.crt -days 1 -subj /CN=conformance-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign",
        )
        .await?;
        Ok(Authority {
            dir: dir.to_owned(),
        })
    }

    /// The file holding its certificate (PEM): what a runtime trusts.
    pub fn certificate_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A server certificate for 127.0.0.1 and `localhost`, signed by this
    /// CA: the certificate and key files.
    async fn server_certificate(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        openssl(
            &self.dir,
            "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        )
        .await?;
        std::fs::write(
            self.dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n\
             basicConstraints=CA:FALSE\n",
        )?;
        openssl(
            &self.dir,
            "x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
             -out server.crt -days 1 -extfile server.ext",
        )
        .await?;
        Ok((self.dir.join("server.crt"), self.dir.join("server.key")))
    }
}

/// Runs `openssl` with `args` in `dir`.
async fn openssl(dir: &Path, args: &str) -> anyhow::Result<()> {
    let output = tokio::process::Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .await
        .context("running openssl")?;
    ensure!(
        output.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Terminates TLS on a loopback port of its own and forwards each link's
/// plaintext to an upstream (the fault proxy); it ends with the task that
/// holds it (its accept loop is aborted when dropped).
pub struct TlsFront {
    address: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsFront {
    /// Serves a certificate `authority` signs, forwarding to `upstream`.
    pub async fn start(authority: &Authority, upstream: SocketAddr) -> anyhow::Result<Self> {
        let (certificate, key) = authority.server_certificate().await?;
        let chain = CertificateDer::pem_file_iter(&certificate)?.collect::<Result<Vec<_>, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&key)?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let accepting = tokio::spawn(async move {
            let mut links = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                links.spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Ok(TlsFront { address, accepting })
    }

    /// The address runtimes are given: `https://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.address)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        // The links end with the JoinSet the accept loop owns.
        self.accepting.abort();
    }
}
