//! Slow, idle and excess connections: closed by the timeouts or refused over the cap, and
//! counted in `GET /metrics`, while the connections under the cap keep being served.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use loopai_cloud::{CloudServer, ServerHandle};

/// Not a timed assertion: how long a client waits before declaring a connection hung.
const WAIT: Duration = Duration::from_secs(30);

fn raw(server: &ServerHandle) -> TcpStream {
    let stream = TcpStream::connect(server.local_addr()).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

/// One keep-alive request; returns the whole response.
fn exchange(stream: &mut TcpStream, method: &str, path: &str, body: &str) -> String {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("a response");
        assert!(n > 0, "closed before the response");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response);
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if rest.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// Reads until the server closes `stream`; panics if it is still open after `WAIT`.
fn closed_by_server(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("connection still open after {WAIT:?} ({e})"),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

fn batch(id: &str) -> String {
    serde_json::json!({
        "batch_id": id, "deployment_id": "edge-1", "task_id": "spam",
        "program_version": 1, "timestamp": "2026-11-25T04:23:14Z",
        "execution_summaries": [], "sampled_validations": [], "metrics": {}
    })
    .to_string()
}

#[test]
fn slowloris_and_idle_connections_are_closed_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = CloudServer::builder()
        .dir(dir.path())
        .port(0)
        .header_read_timeout(Duration::from_millis(400))
        .idle_timeout(Duration::from_millis(400))
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let mut slow = raw(&server);
    slow.write_all(b"POST /api/v1/telemetry HTTP/1.1\r\n")
        .unwrap();
    let mut closed = false;
    for i in 0..300 {
        std::thread::sleep(Duration::from_millis(100));
        if slow
            .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            closed = true;
            break;
        }
        slow.set_nonblocking(true).unwrap();
        let peek = slow.read(&mut [0u8; 64]);
        slow.set_nonblocking(false).unwrap();
        if matches!(peek, Ok(0)) || matches!(&peek, Err(e) if e.kind() != ErrorKind::WouldBlock) {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a slowloris client was still connected after 300 header lines"
    );

    let mut idle = raw(&server);
    let answer = exchange(&mut idle, "POST", "/api/v1/telemetry", &batch("b-idle"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(closed_by_server(&mut idle), "");

    let metrics = exchange(&mut raw(&server), "GET", "/metrics", "");
    for line in [
        "loopai_http_connections_timed_out_total{reason=\"header\"} 1\n",
        "loopai_http_connections_timed_out_total{reason=\"idle\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line}in\n{metrics}");
    }
    server.shutdown(WAIT).unwrap();
}

#[test]
fn over_max_connections_new_ones_get_503_while_uploads_keep_being_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = CloudServer::builder()
        .dir(dir.path())
        .port(0)
        .max_connections(2)
        .build()
        .unwrap()
        .spawn()
        .unwrap();
    let mut first = raw(&server);
    let mut second = raw(&server);
    assert!(exchange(&mut first, "GET", "/health", "").starts_with("HTTP/1.1 200"));
    assert!(exchange(&mut second, "GET", "/health", "").starts_with("HTTP/1.1 200"));

    let refused = closed_by_server(&mut raw(&server));
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

    let answer = exchange(&mut first, "POST", "/api/v1/telemetry", &batch("b-cap"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let metrics = exchange(&mut second, "GET", "/metrics", "");
    for line in [
        "loopai_http_connections_open 2\n",
        "loopai_http_connections_refused_total 1\n",
    ] {
        assert!(metrics.contains(line), "{line}in\n{metrics}");
    }
    drop((first, second));
    server.shutdown(WAIT).unwrap();
}
