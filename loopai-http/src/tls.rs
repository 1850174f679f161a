//! TLS for the servers: the certificate and key files, the rustls server configuration
//! (TLS 1.2 and 1.3 only, ALPN `http/1.1`, the `ring` provider) and reloading the
//! certificate while serving.
//!
//! The certificate is served through a resolver that reads the current [`CertifiedKey`]
//! on every handshake, so [`ServerTls::reload`] swaps it for new handshakes while
//! established connections keep the session they negotiated.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::{Error, ErrorKind, Result};

/// The crypto provider of every TLS endpoint in Loopai: `ring`, the one `ureq` and
/// `reqwest` already use, so only one provider is compiled.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server's TLS: where its certificate chain and private key live (PEM files), the
/// pair loaded from them, and the rustls configuration that serves it.
///
/// ```no_run
/// let tls = loopai_http::ServerTls::load("/etc/loopai/cert.pem", "/etc/loopai/key.pem")?;
/// // … serve with it (see `Listener`); later, after the files were replaced:
/// tls.reload()?;
/// # Ok::<(), loopai_http::Error>(())
/// ```
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: Arc<Current>,
    config: Arc<ServerConfig>,
    reloads: AtomicU64,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("reloads", &self.reloads())
            .finish_non_exhaustive()
    }
}

/// The certificate served now.
struct Current(ArcSwap<CertifiedKey>);

impl fmt::Debug for Current {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Current(..)")
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl ServerTls {
    /// Loads the certificate chain (`cert`, PEM, leaf first) and its private key (`key`,
    /// PEM: PKCS#8, PKCS#1 or SEC1) and builds the server configuration.
    ///
    /// Errors are [`ErrorKind::Config`] naming the file and what is wrong with it: cannot
    /// be read, holds no certificate or no private key, a key type that is not supported,
    /// or a key that does not belong to the certificate.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Arc<ServerTls>> {
        let cert_path = cert.into();
        let key_path = key.into();
        let pair = load_pair(&cert_path, &key_path)?;
        let current = Arc::new(Current(ArcSwap::from_pointee(pair)));
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::new(ErrorKind::Config, format!("TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        // The connections are served as HTTP/1.1 (see `connections.rs`).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(ServerTls {
            cert_path,
            key_path,
            current,
            config: Arc::new(config),
            reloads: AtomicU64::new(0),
        }))
    }

    /// Reads the two files again and serves the new pair to every later handshake;
    /// established connections are not touched. On an error the pair served so far stays
    /// (the error is [`load`](Self::load)'s).
    pub fn reload(&self) -> Result<()> {
        let pair = load_pair(&self.cert_path, &self.key_path)?;
        self.current.0.store(Arc::new(pair));
        self.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many times [`reload`](Self::reload) succeeded.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// The rustls configuration handshakes are made with.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }
}

fn config_error(path: &Path, what: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Config, format!("{}: {what}", path.display()))
}

/// Reads `path` whole, naming it on an error.
fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| config_error(path, format_args!("cannot read the {what}: {e}")))
}

/// Loads and checks a certificate chain and its key.
fn load_pair(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey> {
    let cert_pem = read(cert_path, "TLS certificate")?;
    let mut chain = Vec::new();
    for (i, item) in CertificateDer::pem_slice_iter(&cert_pem).enumerate() {
        let cert = item.map_err(|e| {
            config_error(
                cert_path,
                format_args!("PEM certificate #{}: {}", i + 1, pem_problem(&e)),
            )
        })?;
        chain.push(cert);
    }
    if chain.is_empty() {
        return Err(config_error(
            cert_path,
            "no certificate found (expected a PEM `BEGIN CERTIFICATE` block)",
        ));
    }
    let key_pem = read(key_path, "TLS private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => config_error(
            key_path,
            "no private key found (expected a PEM `BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` block)",
        ),
        e => config_error(key_path, format_args!("PEM private key: {}", pem_problem(&e))),
    })?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| config_error(key_path, format_args!("unusable private key: {e}")))?;
    let pair = CertifiedKey::new(chain, signing_key);
    pair.keys_match().map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => Error::new(
            ErrorKind::Config,
            format!(
                "{}: the private key is not the key of the certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
        ),
        rustls::Error::InconsistentKeys(_) => Error::new(
            ErrorKind::Config,
            format!(
                "{}: the private key cannot be checked against the certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
        ),
        other => config_error(cert_path, format_args!("invalid certificate: {other}")),
    })?;
    Ok(pair)
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as Pem;
    match e {
        Pem::MissingSectionEnd { end_marker } => format!(
            "missing the end marker {:?}",
            String::from_utf8_lossy(end_marker)
        ),
        Pem::IllegalSectionStart { line } => {
            format!("malformed begin line {:?}", String::from_utf8_lossy(line))
        }
        Pem::Base64Decode(why) => format!("invalid base64 ({why})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and leaf certificates issued by it, made at test time.
    pub(crate) struct TestPki {
        ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    }

    /// A leaf certificate and its key, as PEM.
    pub(crate) struct Leaf {
        pub cert: String,
        pub key: String,
    }

    impl TestPki {
        pub(crate) fn new(name: &str) -> TestPki {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let key = rcgen::KeyPair::generate().unwrap();
            TestPki {
                ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
            }
        }

        pub(crate) fn ca_pem(&self) -> String {
            self.ca.pem()
        }

        /// A leaf for `hosts` (DNS names or IP addresses) with common name `cn`.
        pub(crate) fn leaf(&self, hosts: &[&str], cn: &str) -> Leaf {
            let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            Leaf {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_good_pair_loads_and_a_reload_swaps_it() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new("test CA");
        let one = pki.leaf(&["localhost"], "one");
        let cert = write(dir.path(), "cert.pem", &one.cert);
        let key = write(dir.path(), "key.pem", &one.key);
        let tls = ServerTls::load(&cert, &key).unwrap();
        let before = tls.current.0.load_full();
        let two = pki.leaf(&["localhost"], "two");
        write(dir.path(), "cert.pem", &two.cert);
        write(dir.path(), "key.pem", &two.key);
        tls.reload().unwrap();
        assert_eq!(tls.reloads(), 1);
        assert_ne!(tls.current.0.load_full().cert, before.cert);
    }

    #[test]
    fn a_failed_reload_keeps_the_pair_served_so_far() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new("test CA");
        let one = pki.leaf(&["localhost"], "one");
        let cert = write(dir.path(), "cert.pem", &one.cert);
        let key = write(dir.path(), "key.pem", &one.key);
        let tls = ServerTls::load(&cert, &key).unwrap();
        let before = tls.current.0.load_full();
        // A key of another certificate: refused, and nothing changes.
        write(dir.path(), "key.pem", &pki.leaf(&["localhost"], "x").key);
        let err = tls.reload().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert_eq!(
            err.message(),
            format!(
                "{}: the private key is not the key of the certificate in {}",
                key.display(),
                cert.display()
            )
        );
        assert_eq!(tls.reloads(), 0);
        assert_eq!(tls.current.0.load_full().cert, before.cert);
    }

    #[test]
    fn bad_files_are_config_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new("test CA");
        let leaf = pki.leaf(&["localhost"], "one");
        let cert = write(dir.path(), "cert.pem", &leaf.cert);
        let key = write(dir.path(), "key.pem", &leaf.key);
        let missing = dir.path().join("missing.pem");
        let empty = write(dir.path(), "empty.pem", "not pem at all\n");
        let broken = write(
            dir.path(),
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let cases = [
            (
                ServerTls::load(&missing, &key).unwrap_err(),
                format!("{}: cannot read the TLS certificate: ", missing.display()),
            ),
            (
                ServerTls::load(&empty, &key).unwrap_err(),
                format!(
                    "{}: no certificate found (expected a PEM `BEGIN CERTIFICATE` block)",
                    empty.display()
                ),
            ),
            (
                ServerTls::load(&broken, &key).unwrap_err(),
                format!("{}: PEM certificate #1: invalid base64", broken.display()),
            ),
            (
                ServerTls::load(&cert, &missing).unwrap_err(),
                format!("{}: cannot read the TLS private key: ", missing.display()),
            ),
            (
                ServerTls::load(&cert, &cert).unwrap_err(),
                format!("{}: no private key found", cert.display()),
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.message().starts_with(&want), "{err} / {want}");
        }
    }

    // Serving over TLS, with a real rustls client.

    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, SocketAddr, TcpStream};
    use std::time::Duration;

    use axum::routing::get;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use crate::{start_with, ConnectionLimits, ConnectionStats, Listener, Serving};

    type TlsStream = StreamOwned<ClientConnection, TcpStream>;

    /// A server on 127.0.0.1 with a leaf for `localhost` from `pki`, answering "hello".
    struct TlsServer {
        serving: Serving,
        stats: Arc<ConnectionStats>,
        dir: tempfile::TempDir,
    }

    impl TlsServer {
        fn start(pki: &TestPki, limits: ConnectionLimits) -> TlsServer {
            let dir = tempfile::tempdir().unwrap();
            let leaf = pki.leaf(&["localhost", "127.0.0.1"], "first");
            let cert = write(dir.path(), "cert.pem", &leaf.cert);
            let key = write(dir.path(), "key.pem", &leaf.key);
            let tls = ServerTls::load(cert, key).unwrap();
            let stats = Arc::new(ConnectionStats::default());
            let app = axum::Router::new().route("/", get(|| async { "hello" }));
            let listener = Listener {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                tls: Some(tls),
            };
            let serving = start_with(
                listener,
                Some(1),
                "test-tls",
                "starting",
                app,
                limits,
                Arc::clone(&stats),
            )
            .unwrap();
            TlsServer {
                serving,
                stats,
                dir,
            }
        }

        fn stop(mut self) {
            self.serving.stop();
            self.serving.join(Duration::from_secs(10)).unwrap();
            self.serving.shutdown_background();
        }
    }

    fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    fn connect(server: &TlsServer, config: Arc<ClientConfig>, host: &str) -> TlsStream {
        let name = ServerName::try_from(host.to_owned()).unwrap();
        let conn = ClientConnection::new(config, name).unwrap();
        let tcp = TcpStream::connect(server.serving.local_addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        StreamOwned::new(conn, tcp)
    }

    /// One keep-alive GET; the response, or the error (handshake included).
    fn get_hello(stream: &mut TlsStream) -> std::io::Result<String> {
        stream.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        while !response.ends_with(b"hello") {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            response.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8(response).unwrap())
    }

    fn rustls_error(e: &std::io::Error) -> Option<&rustls::Error> {
        e.get_ref()?.downcast_ref::<rustls::Error>()
    }

    fn served_cert(stream: &TlsStream) -> CertificateDer<'static> {
        stream.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    #[test]
    fn https_is_served_to_a_client_that_trusts_the_ca_and_refused_by_one_that_does_not() {
        let pki = TestPki::new("test CA");
        let server = TlsServer::start(&pki, ConnectionLimits::default());
        let mut stream = connect(&server, client_config(&pki.ca_pem()), "localhost");
        let response = get_hello(&mut stream).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert_eq!(
            stream.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(stream.conn.alpn_protocol(), None, "the client offered none");

        // A client that trusts another CA refuses the certificate: no downgrade.
        let other = TestPki::new("another CA");
        let mut stranger = connect(&server, client_config(&other.ca_pem()), "localhost");
        let err = get_hello(&mut stranger).unwrap_err();
        assert_eq!(
            rustls_error(&err),
            Some(&rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
            "{err}"
        );
        // A plain-HTTP client gets no answer, only a closed connection.
        let mut plain = TcpStream::connect(server.serving.local_addr).unwrap();
        plain
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer);
        assert!(!answer.starts_with(b"HTTP/1.1"), "{answer:?}");
        drop(stream);
        crate::connections::tests::wait_for(|| server.stats.tls_handshake_errors() == 2);
        server.stop();
    }

    #[test]
    fn a_tls12_only_client_is_served() {
        let pki = TestPki::new("test CA");
        let server = TlsServer::start(&pki, ConnectionLimits::default());
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(pki.ca_pem().as_bytes()).unwrap())
            .unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut stream = connect(&server, Arc::new(config), "localhost");
        assert!(get_hello(&mut stream).unwrap().starts_with("HTTP/1.1 200"));
        assert_eq!(
            stream.conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        server.stop();
    }

    #[test]
    fn a_reload_serves_the_new_certificate_to_new_connections_while_old_ones_go_on() {
        let pki = TestPki::new("test CA");
        let server = TlsServer::start(&pki, ConnectionLimits::default());
        let mut old = connect(&server, client_config(&pki.ca_pem()), "localhost");
        get_hello(&mut old).unwrap();
        let first = served_cert(&old);

        let next = pki.leaf(&["localhost"], "second");
        write(server.dir.path(), "cert.pem", &next.cert);
        write(server.dir.path(), "key.pem", &next.key);
        server.serving.tls.as_ref().unwrap().reload().unwrap();

        // A new client (a shared config would resume the first session, certificate and
        // all).
        let mut new = connect(&server, client_config(&pki.ca_pem()), "localhost");
        get_hello(&mut new).unwrap();
        let second = served_cert(&new);
        assert_ne!(first, second);
        assert_eq!(second.as_ref(), pem_der(&next.cert).as_slice());
        // The established keep-alive connection is still served, on its first certificate.
        assert!(get_hello(&mut old).unwrap().starts_with("HTTP/1.1 200"));
        assert_eq!(served_cert(&old), first);
        server.stop();
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    #[test]
    fn a_silent_client_is_dropped_after_the_header_timeout_and_tls_connections_count_under_the_cap()
    {
        let pki = TestPki::new("test CA");
        let server = TlsServer::start(
            &pki,
            ConnectionLimits {
                header_read_timeout: Duration::from_millis(400),
                max_connections: 1,
                ..ConnectionLimits::default()
            },
        );
        // Connects and never says hello: holds the only place until the handshake times out.
        let mut silent = TcpStream::connect(server.serving.local_addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        crate::connections::tests::wait_for(|| server.stats.open() == 1);
        // Over the cap: closed at once, without a (plain-text) answer.
        let mut refused = connect(&server, client_config(&pki.ca_pem()), "localhost");
        assert!(get_hello(&mut refused).is_err());
        assert_eq!(server.stats.refused(), 1);
        let mut buf = [0u8; 16];
        assert_eq!(
            silent.read(&mut buf).unwrap_or(0),
            0,
            "closed by the server"
        );
        crate::connections::tests::wait_for(|| server.stats.open() == 0);
        assert_eq!(server.stats.tls_handshake_timeouts(), 1);
        // The place is free again.
        let mut stream = connect(&server, client_config(&pki.ca_pem()), "localhost");
        assert!(get_hello(&mut stream).unwrap().starts_with("HTTP/1.1 200"));
        drop(stream);
        server.stop();
    }
}
