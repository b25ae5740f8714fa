//! A blocking HTTP/1.1 client: one request on a fresh connection (`Connection: close`),
//! the connect, write and read each bounded, the response as the server sent it
//! (status, lower-cased headers, the body de-chunked). It is for tools that must see
//! exactly what a server answers — `troupe chaos`, labs, benchmarks, tests — not a
//! general client: no TLS, no redirects, no keep-alive.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Longest a connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest writing the request may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest [`request`] waits for the response (a long prompt may take this long).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A response: status, headers (names lower-cased), body (chunked bodies decoded).
#[derive(Debug, Clone, Default)]
pub struct Resp {
    /// The status code (0 when the status line did not parse).
    pub status: u16,
    /// Headers by lower-case name.
    pub headers: HashMap<String, String>,
    /// The body, de-chunked.
    pub body: String,
}

impl Resp {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One request with [`READ_TIMEOUT`]. A server may answer (e.g. 400, 413) before reading
/// an oversize body; the unread rest is not an error here.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    request_within(addr, method, path, headers, body, READ_TIMEOUT)
}

/// One request, waiting at most `read_timeout` for the response.
pub fn request_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    read_timeout: Duration,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    s.set_read_timeout(Some(read_timeout))?;
    s.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(parse(&raw))
}

/// A JSON request (`Content-Type: application/json`); returns (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, String)> {
    let r = request(addr, method, path, &[("Content-Type", "application/json")], body.unwrap_or("").as_bytes())?;
    Ok((r.status, r.body))
}

/// The same with an `Authorization` header value (e.g. `Bearer <service token>`).
pub fn http_auth(
    addr: SocketAddr,
    method: &str,
    path: &str,
    authorization: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let headers = [("Content-Type", "application/json"), ("Authorization", authorization)];
    let r = request(addr, method, path, &headers, body.unwrap_or("").as_bytes())?;
    Ok((r.status, r.body))
}

/// Parses a whole HTTP/1.1 response.
pub fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.get(9..12)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Resp { status, headers, body }
}

/// Decodes a chunked HTTP/1.1 body (stops at the last chunk or at a malformed one).
pub fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((len, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server that reads the whole request (head and `Content-Length` body) and
    /// answers `answer`. (Answering after the head alone and closing would leave the
    /// body unread: the kernel then resets the connection, and the client may see the
    /// reset instead of the answer.)
    fn serve_once(answer: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let h = std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            s.write_all(answer.as_bytes()).expect("write");
            String::from_utf8_lossy(&got).to_string()
        });
        (addr, h)
    }

    #[test]
    fn a_request_carries_its_headers_and_the_response_is_parsed() {
        let (addr, h) = serve_once("HTTP/1.1 201 Created\r\nX-Thing: A b\r\nContent-Length: 2\r\n\r\nok");
        let r = request(addr, "PUT", "/k", &[("X-Key", "v")], b"{}").expect("request");
        let sent = h.join().expect("server");
        assert!(sent.starts_with("PUT /k HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("X-Key: v\r\n") && sent.contains("Content-Length: 2\r\n"), "{sent}");
        assert_eq!((r.status, r.header("x-thing"), r.body.as_str()), (201, Some("A b"), "ok"));
    }

    #[test]
    fn chunked_bodies_are_decoded_and_a_bad_status_line_is_zero() {
        let r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        assert_eq!(r.body, "abcde");
        assert_eq!(parse(b"garbage").status, 0);
        assert_eq!(dechunk("zz\r\nabc"), "", "a malformed chunk size stops decoding");
    }

    #[test]
    fn a_server_that_never_answers_is_a_timeout_not_a_hang() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let keep = std::thread::spawn(move || {
            let conn = l.accept();
            std::thread::sleep(Duration::from_millis(700));
            drop(conn);
        });
        let t = std::time::Instant::now();
        let e = request_within(addr, "GET", "/", &[], b"", Duration::from_millis(200)).expect_err("times out");
        assert!(matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        let _ = keep.join();
    }
}
