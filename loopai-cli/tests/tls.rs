//! `loopai serve` and `loopai cloud serve` over HTTPS, with a CA and certificates made at
//! test time: clients that trust the CA are served, clients that do not fail clearly,
//! SIGHUP swaps the certificate without dropping an established connection, and a runtime
//! downloads from the HTTPS cloud through `cloud.ca_file`.

#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{loopai, sigterm, stderr, stdout};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

/// Not a timed assertion: only how long to wait before declaring the server hung.
const HANG: Duration = Duration::from_secs(60);

struct Ca(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
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
        Ca(rcgen::CertifiedIssuer::self_signed(params, key).unwrap())
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.0.pem()).unwrap();
    }

    /// Writes a leaf for localhost and 127.0.0.1 to `cert` and `key`; returns its DER.
    fn write_leaf(&self, cert: &Path, key: &Path) -> Vec<u8> {
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let pair = rcgen::KeyPair::generate().unwrap();
        let leaf = params.signed_by(&pair, &self.0).unwrap();
        std::fs::write(cert, leaf.pem()).unwrap();
        std::fs::write(key, pair.serialize_pem()).unwrap();
        leaf.der().to_vec()
    }
}

/// A server child and its stderr lines.
struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn spawn(cmd: &mut Command) -> Server {
        let mut child = cmd
            .env_remove("LOOPAI_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("loopai runs");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                if tx.send(line.unwrap()).is_err() {
                    break;
                }
            }
        });
        Server {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `marker`.
    fn wait_for(&mut self, marker: &str) -> String {
        loop {
            match self.lines.recv_timeout(HANG) {
                Ok(line) if line.contains(marker) => return line,
                Ok(line) => self.seen.push(line),
                Err(e) => panic!(
                    "no {marker:?} on stderr ({e}); got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The `https://…` URL of the `listening on` line.
    fn url(&mut self) -> String {
        let line = self.wait_for("listening on ");
        line.split_whitespace()
            .find(|w| w.starts_with("https://"))
            .unwrap_or_else(|| panic!("not an https URL: {line}"))
            .to_owned()
    }

    fn stop(mut self) {
        sigterm(&self.child);
        assert!(self.child.wait().unwrap().success());
    }
}

fn agent(ca: Option<&Path>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(path) = ca {
        let pem = std::fs::read(path).unwrap();
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&[cert]));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(HANG))
        .tls_config(tls.build())
        .build()
        .into()
}

/// A keep-alive HTTPS connection made with rustls directly (to see the certificate).
struct Conn(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl Conn {
    fn open(url: &str, ca: &Path) -> Conn {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let addr = url.trim_start_matches("https://").trim_end_matches('/');
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(HANG)).unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        Conn(rustls::StreamOwned::new(conn, tcp))
    }

    /// GET `path` on this connection; the status line.
    fn get(&mut self, path: &str) -> String {
        write!(self.0, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            self.0.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .expect("a content-length");
        let mut body = vec![0u8; length];
        self.0.read_exact(&mut body).unwrap();
        head.lines().next().unwrap().to_owned()
    }

    fn cert(&self) -> Vec<u8> {
        self.0.conn.peer_certificates().unwrap()[0].to_vec()
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

fn program(label: &str) -> String {
    serde_json::json!({
        "format": "loopai.program/1", "task": "spam",
        "inputs": [{"name": "text", "path": "/text", "type": "text"}],
        "decide": {"op": "rules", "rules": [
            {"when": {"always": true}, "then": label, "confidence": 0.9}]},
        "output": {"kind": "label", "labels": ["spam", "ham"]}
    })
    .to_string()
}

#[test]
fn serve_over_tls_serves_trusting_clients_and_reloads_its_certificate_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, cert, key) = paths(dir.path());
    let ca = Ca::new("test CA");
    ca.write(&ca_file);
    let first = ca.write_leaf(&cert, &key);
    let data = dir.path().join("data");
    let file = dir.path().join("program.json");
    std::fs::write(&file, program("ham")).unwrap();
    let o = loopai()
        .args(["artifacts", "install", "--task", "spam", "--data-dir"])
        .arg(&data)
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let mut server = Server::spawn(
        loopai()
            .args(["serve", "--task", "spam", "--port", "0", "--data-dir"])
            .arg(&data)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key),
    );
    let url = server.url();
    server.wait_for("ready");

    // A client that trusts the CA is served.
    let mut r = agent(Some(&ca_file))
        .post(format!("{url}/execute"))
        .header("Content-Type", "application/json")
        .send(r#"{"input": {"text": "hello"}}"#)
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value =
        serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(v["output"], "ham", "{v}");
    // One that does not (Mozilla's roots) refuses the certificate: no fallback to http.
    let err = agent(None).get(format!("{url}/health")).call().unwrap_err();
    assert!(
        matches!(
            &err,
            ureq::Error::Rustls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ) || err.to_string().contains("UnknownIssuer"),
        "{err}"
    );

    // SIGHUP with new files: new connections get the new certificate, an established
    // keep-alive connection goes on.
    let mut old = Conn::open(&url, &ca_file);
    assert_eq!(old.get("/health"), "HTTP/1.1 200 OK");
    assert_eq!(old.cert(), first);
    let second = ca.write_leaf(&cert, &key);
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    server.wait_for("SIGHUP: TLS certificate reloaded");
    let mut new = Conn::open(&url, &ca_file);
    assert_eq!(new.get("/health"), "HTTP/1.1 200 OK");
    assert_eq!(new.cert(), second);
    assert_eq!(old.get("/health"), "HTTP/1.1 200 OK");
    assert_eq!(old.cert(), first);
    server.stop();
}

#[test]
fn serve_refuses_a_key_that_is_not_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = paths(dir.path());
    let ca = Ca::new("test CA");
    ca.write_leaf(&cert, &key);
    let other_cert = dir.path().join("other.pem");
    ca.write_leaf(&other_cert, &dir.path().join("other-key.pem"));
    let o = loopai()
        .args(["serve", "--task", "spam", "--port", "0", "--data-dir"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&other_cert)
        .arg("--tls-key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}: the private key is not the key of the certificate in {}",
            key.display(),
            other_cert.display()
        )),
        "{err}"
    );
    // --tls-cert alone is a usage error.
    let o = loopai()
        .args(["serve", "--task", "spam", "--data-dir"])
        .arg(dir.path())
        .arg("--tls-cert")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--tls-key"), "{}", stderr(&o));
}

#[test]
fn a_runtime_downloads_from_an_https_cloud_through_its_ca_file_and_refuses_it_without() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_file, cert, key) = paths(dir.path());
    let ca = Ca::new("test CA");
    ca.write(&ca_file);
    ca.write_leaf(&cert, &key);
    let mut server = Server::spawn(
        loopai()
            .args(["cloud", "serve", "--port", "0", "--dir"])
            .arg(dir.path().join("cloud"))
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key),
    );
    let url = server.url();
    let port = url.rsplit(':').next().unwrap().to_owned();
    let api_url = format!("https://localhost:{port}");

    let file = dir.path().join("program.json");
    std::fs::write(&file, program("ham")).unwrap();
    let publish = |ca: Option<&Path>| {
        let mut cmd = loopai();
        cmd.args(["publish", "--api-url", &api_url, "--task", "spam"]);
        if let Some(ca) = ca {
            cmd.arg("--ca-file").arg(ca);
        }
        cmd.arg(&file).output().unwrap()
    };
    let o = publish(None);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("UnknownIssuer"), "{}", stderr(&o));
    let o = publish(Some(&ca_file));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("published spam v1 "),
        "{}",
        stdout(&o)
    );

    // A hybrid runtime with cloud.ca_file downloads v1 over HTTPS and runs it.
    let exec = |config: &str| {
        let data = tempfile::tempdir().unwrap();
        let config_file = data.path().join("deployment.yaml");
        std::fs::write(&config_file, config).unwrap();
        loopai()
            .args(["exec", "--task", "spam", "--input", r#"{"text": "hi"}"#])
            .arg("--data-dir")
            .arg(data.path())
            .arg("--config")
            .arg(&config_file)
            .output()
            .unwrap()
    };
    let base = format!(
        "runtime: {{mode: hybrid}}\ntelemetry: {{enabled: false}}\ncloud:\n  api_url: {api_url}\n  notifications: false\n  startup_wait_sec: 20\n"
    );
    let o = exec(&format!("{base}  ca_file: {}\n", ca_file.display()));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["output"], "ham", "{v}");
    assert_eq!(v["version"], 1, "{v}");

    // Without it the certificate is refused, and the error says how to fix it.
    let o = exec(&format!("{base}  startup_wait_sec: 1\n").replace("  startup_wait_sec: 20\n", ""));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("TLS: the certificate of localhost has an unknown issuer: it is not signed by a trusted CA (set cloud.ca_file to trust a private CA)"),
        "{err}"
    );
    server.stop();
}
