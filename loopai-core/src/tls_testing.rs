//! TLS set-ups for the crate's unit tests (compiled only for `cfg(test)`): a private CA
//! made at test time with leaf certificates (good, for another host, expired), and an
//! HTTPS server on 127.0.0.1 that answers every request with one scripted response.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA made at test time.
pub(crate) struct TestCa {
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A leaf certificate and its key, as PEM.
pub(crate) struct Leaf {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub(crate) fn new(name: &str) -> TestCa {
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
        TestCa {
            ca: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// Writes the CA certificate to `dir/name` (a `ca_file`).
    pub(crate) fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.ca.pem()).unwrap();
        path
    }

    /// A leaf for `hosts`.
    pub(crate) fn leaf(&self, hosts: &[&str]) -> Leaf {
        self.leaf_with(hosts, |_| {})
    }

    /// A leaf for `hosts` that expired on 2020-01-01.
    pub(crate) fn expired_leaf(&self, hosts: &[&str]) -> Leaf {
        self.leaf_with(hosts, |p| {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn leaf_with(&self, hosts: &[&str], edit: impl FnOnce(&mut rcgen::CertificateParams)) -> Leaf {
        let names: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        edit(&mut params);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// An HTTPS server on 127.0.0.1 serving `leaf`, answering every request with `response`
/// (a whole HTTP/1.1 response) and closing the connection. Stops when dropped.
pub(crate) struct HttpsServer {
    pub addr: SocketAddr,
    /// Requests answered (handshakes that failed are not counted).
    pub answered: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpsServer {
    pub(crate) fn start(leaf: &Leaf, response: String) -> HttpsServer {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(leaf.cert.as_bytes())
                .map(Result::unwrap)
                .collect();
        let key = PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, answered) = (Arc::clone(&stop), Arc::clone(&answered));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match listener.accept() {
                        Ok((tcp, _)) => {
                            if serve_one(tcp, &config, &response) {
                                answered.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        HttpsServer {
            addr,
            answered,
            stop,
            thread: Some(thread),
        }
    }

    /// `https://localhost:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Handshakes, reads one request's head (and a `content-length` body), answers.
fn serve_one(tcp: TcpStream, config: &Arc<rustls::ServerConfig>, response: &str) -> bool {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(Arc::clone(config)) else {
        return false;
    };
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let sent = stream.write_all(response.as_bytes()).is_ok() && stream.flush().is_ok();
    stream.conn.send_close_notify();
    let _ = stream.flush();
    sent
}

/// A complete `200` response with a JSON `body`, closing the connection.
pub(crate) fn json_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
