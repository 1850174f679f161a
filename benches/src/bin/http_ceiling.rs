//! The HTTP ceiling of the machine: a server that does no work at all.
//!
//! ```text
//! cargo run --release -p loopai-benches --bin http_ceiling -- PORT
//! ```
//! Listens on `127.0.0.1:PORT` and answers every HTTP/1.1 request with the same small
//! JSON `200`, without parsing anything beyond the end of each request (the blank line and
//! `Content-Length`): no routing, no JSON, no program, no log. `benches/compare/run.sh`
//! drives it with the same `wrk` flags as `loopai serve` and the FastAPI baseline, so the
//! run shows what loopback TCP and the load generator alone allow on the machine, and
//! therefore the largest ratio any server could show over the baseline there.
//!
//! Not a server to use: it trusts its client (a malformed request ends the connection).

use std::process::ExitCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
content-length: 66\r\n\r\n\
{\"output\":\"ham\",\"confidence\":0.99,\"version\":1,\"latency_ms\":0.001}\n";

/// Requests are refused (the connection is closed) above this many header bytes.
const MAX_HEAD: usize = 64 * 1024;

/// The number of complete requests at the start of `buf` and the bytes they take, or
/// `None` when the stream is not HTTP this server can frame.
fn complete_requests(buf: &[u8]) -> Option<(usize, usize)> {
    let (mut count, mut at) = (0, 0);
    loop {
        let rest = &buf[at..];
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return (rest.len() <= MAX_HEAD).then_some((count, at));
        };
        let head = std::str::from_utf8(&rest[..end]).ok()?;
        let mut body = 0;
        for line in head.split("\r\n").skip(1) {
            let (name, value) = line.split_once(':')?;
            if name.trim().eq_ignore_ascii_case("content-length") {
                body = value.trim().parse::<usize>().ok()?;
            }
        }
        let total = end + 4 + body;
        if total > rest.len() {
            return Some((count, at));
        }
        at += total;
        count += 1;
    }
}

async fn serve(mut stream: TcpStream) {
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(RESPONSE.len() * 32);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let Some((count, used)) = complete_requests(&buf) else {
            return;
        };
        buf.drain(..used);
        out.clear();
        for _ in 0..count {
            out.extend_from_slice(RESPONSE);
        }
        if count > 0 && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn main() -> ExitCode {
    let Some(port) = std::env::args().nth(1).and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("usage: http_ceiling PORT");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("http_ceiling: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("http_ceiling: cannot listen on 127.0.0.1:{port}: {e}");
                return ExitCode::FAILURE;
            }
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Small answers must not wait for Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(serve(stream));
                }
                Err(e) => eprintln!("http_ceiling: accept: {e}"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_pipelined_requests_and_keeps_a_partial_one() {
        let one = b"POST /execute HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        let mut buf = one.to_vec();
        buf.extend_from_slice(b"GET /health HTTP/1.1\r\n\r\n");
        buf.extend_from_slice(b"POST /execute HTTP/1.1\r\ncontent-length: 9\r\n\r\nabc");
        let two = one.len() + b"GET /health HTTP/1.1\r\n\r\n".len();
        assert_eq!(complete_requests(&buf), Some((2, two)));
        assert_eq!(complete_requests(b"POST / HTTP/1.1\r\nHost"), Some((0, 0)));
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert_eq!(complete_requests(b"GET / HTTP/1.1\r\nbroken\r\n\r\n"), None);
        assert_eq!(
            complete_requests(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            None
        );
        assert_eq!(complete_requests(&vec![b'a'; MAX_HEAD + 1]), None);
    }

    #[test]
    fn the_response_declares_its_body_length() {
        let text = std::str::from_utf8(RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(declared, body.len());
    }
}
