//! A blocking WebSocket client for tests, in the style of the raw HTTP client: every
//! read is bounded, and a refused upgrade comes back with its status and body.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

/// What one bounded read saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsRead {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// The server closed the session with this code and reason.
    Closed {
        /// The close code (1000 normal, 1001 going away, 1009 too big, 1011 no pong
        /// or a server error, 1013 reading too slowly).
        code: u16,
        /// The server's reason.
        reason: String,
    },
    /// Nothing arrived within the wait.
    Timeout,
    /// The connection ended without a close frame.
    Gone(String),
}

/// Why a WebSocket could not be opened.
#[derive(Debug)]
pub enum WsConnectError {
    /// The server answered the upgrade with an HTTP error.
    Refused {
        /// The HTTP status (401, 503, …).
        status: u16,
        /// The response body (the reason, as JSON).
        body: String,
    },
    /// Anything else (connection refused, a timeout, a protocol error).
    Failed(String),
}

/// An open WebSocket.
#[derive(Debug)]
pub struct WsConn {
    socket: WebSocket<TcpStream>,
}

/// Opens `ws://addr{path}` within `timeout`, with an `Authorization` header when given.
pub fn ws_connect(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<WsConn, WsConnectError> {
    let failed = |e: &dyn std::fmt::Display| WsConnectError::Failed(e.to_string());
    let mut request = format!("ws://{addr}{path}").into_client_request().map_err(|e| failed(&e))?;
    if let Some(auth) = authorization {
        request.headers_mut().insert("authorization", HeaderValue::from_str(auth).map_err(|e| failed(&e))?);
    }
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| failed(&e))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| failed(&e))?;
    stream.set_write_timeout(Some(timeout)).map_err(|e| failed(&e))?;
    match tungstenite::client(request, stream) {
        Ok((socket, _)) => Ok(WsConn { socket }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err(WsConnectError::Refused { status: resp.status().as_u16(), body })
        }
        Err(e) => Err(failed(&e)),
    }
}

impl WsConn {
    /// Sends a text message.
    pub fn send_text(&mut self, text: &str) -> Result<(), String> {
        self.socket.send(Message::Text(text.into())).map_err(|e| e.to_string())
    }
    /// Sends a binary message.
    pub fn send_binary(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.socket.send(Message::Binary(bytes.to_vec().into())).map_err(|e| e.to_string())
    }
    /// The next message within `wait` (pings are answered and skipped).
    pub fn read_within(&mut self, wait: Duration) -> WsRead {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return WsRead::Timeout;
            }
            let _ = self.socket.get_ref().set_read_timeout(Some(left));
            match self.socket.read() {
                Ok(Message::Text(t)) => return WsRead::Text(t.as_str().to_owned()),
                Ok(Message::Binary(b)) => return WsRead::Binary(b.to_vec()),
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1005, String::new()));
                    return WsRead::Closed { code, reason };
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    return WsRead::Timeout;
                }
                Err(e) => return WsRead::Gone(e.to_string()),
            }
        }
    }
    /// Closes normally (1000) and waits briefly for the server's answer.
    pub fn close(mut self) {
        let _ = self.socket.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() }));
        let _ = self.socket.get_ref().set_read_timeout(Some(Duration::from_secs(2)));
        while self.socket.read().is_ok() {}
    }
}
