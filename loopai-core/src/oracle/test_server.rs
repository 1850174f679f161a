//! A stand-in for a chat-completions server, for tests: plain HTTP/1.1 on
//! `127.0.0.1`, answering each request with the next scripted [`Reply`] and recording what
//! it received.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::{json, Value};

/// One scripted reply.
#[derive(Debug, Clone)]
pub(crate) enum Reply {
    /// Status, extra headers, body.
    Http(u16, Vec<(String, String)>, String),
    /// Accept the request and never answer (until the server is dropped).
    Hang,
}

impl Reply {
    /// A 200 chat-completions response whose message content is `content`.
    pub(crate) fn content(content: &str) -> Reply {
        let body = json!({
            "id": "chatcmpl-test", "object": "chat.completion", "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42}
        });
        Reply::Http(200, Vec::new(), body.to_string())
    }

    /// A response with `status` and a JSON error body.
    pub(crate) fn status(status: u16) -> Reply {
        let body = json!({"error": {"message": format!("test error {status}"), "type": "test"}});
        Reply::Http(status, Vec::new(), body.to_string())
    }

    /// Adds a header.
    pub(crate) fn header(self, name: &str, value: &str) -> Reply {
        match self {
            Reply::Http(s, mut h, b) => {
                h.push((name.to_owned(), value.to_owned()));
                Reply::Http(s, h, b)
            }
            Reply::Hang => Reply::Hang,
        }
    }
}

/// A request as received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    script: Mutex<Vec<Reply>>,
    received: Mutex<Vec<Received>>,
    stop: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

/// The server; stops when dropped.
pub(crate) struct TestServer {
    addr: std::net::SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server answering with `script`, in order; once it is used up, every
    /// request gets a 500.
    pub(crate) fn start(script: Vec<Reply>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            script: Mutex::new(script.into_iter().rev().collect()),
            ..State::default()
        });
        let st = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Ok(c) = conn.try_clone() {
                    st.open.lock().unwrap().push(c);
                }
                let st = st.clone();
                std::thread::spawn(move || serve(conn, &st));
            }
        });
        TestServer {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:<port>/v1`, the base URL an OpenAI client would be given.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The requests received so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for c in self.state.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve(conn: TcpStream, state: &State) {
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                let (n, v) = (n.trim().to_owned(), v.trim().to_owned());
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.parse().unwrap_or(0);
                }
                headers.push((n, v));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        state.received.lock().unwrap().push(Received {
            method,
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        let reply = state
            .script
            .lock()
            .unwrap()
            .pop()
            .unwrap_or_else(|| Reply::status(500));
        match reply {
            Reply::Hang => {
                // Hold the connection until the server is dropped (which shuts it down).
                let mut sink = [0u8; 64];
                while !state.stop.load(Ordering::SeqCst) {
                    match reader.read(&mut sink) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                return;
            }
            Reply::Http(status, extra, body) => {
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    body.len()
                );
                for (n, v) in extra {
                    head.push_str(&format!("{n}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if out.write_all(head.as_bytes()).is_err()
                    || out.write_all(body.as_bytes()).is_err()
                {
                    return;
                }
            }
        }
    }
}
