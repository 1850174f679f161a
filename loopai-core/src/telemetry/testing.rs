//! Test doubles: a scripted transport and a tiny real HTTP collector on 127.0.0.1.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;

use super::upload::{Response, Transport};

/// Answers from a script (then `connection refused`); records every body.
#[derive(Debug, Default)]
pub(crate) struct FakeTransport {
    pub script: Mutex<VecDeque<Result<Response, String>>>,
    pub bodies: Mutex<Vec<Vec<u8>>>,
    /// Heartbeat bodies (plain JSON), always answered 200.
    pub heartbeats: Mutex<Vec<Vec<u8>>>,
}

impl FakeTransport {
    pub(crate) fn answer(&self, status: u16, retry_after: Option<&str>) {
        self.script.lock().push_back(Ok(Response {
            status,
            retry_after: retry_after.map(str::to_owned),
        }));
    }
}

impl Transport for FakeTransport {
    fn post(&self, body: &[u8], _timeout: Duration) -> Result<Response, String> {
        self.bodies.lock().push(body.to_vec());
        self.script
            .lock()
            .pop_front()
            .unwrap_or_else(|| Err("connection refused".into()))
    }

    fn post_heartbeat(&self, body: &[u8], _timeout: Duration) -> Result<Response, String> {
        self.heartbeats.lock().push(body.to_vec());
        Ok(Response {
            status: 200,
            retry_after: None,
        })
    }
}

/// Decompresses a gzip body.
pub(crate) fn gunzip(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .expect("gzip body");
    out
}

/// Decompresses `body`, `None` when it is not gzip.
pub(crate) fn try_gunzip(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .ok()
        .map(|_| out)
}

/// One request the collector received.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The decompressed body.
    pub(crate) fn json_bytes(&self) -> Vec<u8> {
        gunzip(&self.body)
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.json_bytes()).expect("JSON body")
    }
}

/// Scripted answers: status and `Retry-After`.
type Script = Arc<Mutex<VecDeque<(u16, Option<String>)>>>;

/// A one-request-per-connection HTTP/1.1 server answering telemetry uploads from a script
/// (then 200) and heartbeats with 200. Other paths (the runtime's artifact refresh) get 404 and are not recorded.
#[derive(Debug)]
pub(crate) struct TestCollector {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    script: Script,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl TestCollector {
    pub(crate) fn start() -> TestCollector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s, st) = (requests.clone(), script.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Some(req) = serve(stream, &s) {
                    r.lock().push(req);
                }
            }
        });
        TestCollector {
            addr,
            requests,
            script,
            stop,
            handle: Some(handle),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request gets this status (and `Retry-After`).
    pub(crate) fn respond(&self, status: u16, retry_after: Option<&str>) {
        self.script
            .lock()
            .push_back((status, retry_after.map(str::to_owned)));
    }

    /// The telemetry uploads received (heartbeats are in [`heartbeats`](Self::heartbeats)).
    pub(crate) fn requests(&self) -> Vec<Request> {
        let all = self.requests.lock();
        all.iter()
            .filter(|r| r.path == "/api/v1/telemetry")
            .cloned()
            .collect()
    }

    /// The heartbeats received (plain JSON).
    pub(crate) fn heartbeats(&self) -> Vec<Value> {
        self.requests
            .lock()
            .iter()
            .filter(|r| r.path == "/api/v1/heartbeats")
            .map(|r| serde_json::from_slice(&r.body).expect("JSON heartbeat"))
            .collect()
    }

    /// The decompressed bodies of telemetry uploads answered 2xx.
    pub(crate) fn batches(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(Request::json)
            .collect()
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve(stream: TcpStream, script: &Script) -> Option<Request> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    let mut stream = stream;
    if path == "/api/v1/heartbeats" {
        let _ = write!(
            stream,
            "HTTP/1.1 200 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return Some(Request {
            method,
            path,
            headers,
            body,
            status: 200,
        });
    }
    if path != "/api/v1/telemetry" {
        let _ = write!(
            stream,
            "HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return None;
    }
    let (status, retry_after) = &script.lock().pop_front().unwrap_or((200, None));
    let extra = retry_after
        .as_ref()
        .map(|v| format!("Retry-After: {v}\r\n"))
        .unwrap_or_default();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n{extra}\r\n"
    );
    let _ = stream.flush();
    Some(Request {
        method,
        path,
        headers,
        body,
        status: *status,
    })
}

/// A loopback address where nothing listens (connections are refused).
pub(crate) fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
