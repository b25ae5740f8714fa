//! A WebSocket client for troupe gateways' WebSocket routes (`troupe_runtime::ws` on
//! the server): connect with an `Authorization` header, send and receive text or
//! binary messages, and learn why the server closed (its code and reason).
//!
//! Pings from the server are answered while [`WsClient::next`] is being awaited (and on
//! every send); a client that stops reading for longer than the server's
//! heartbeat allows is closed by the server.

use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// The server closed the session with this code and reason (1000 normal, 1001
    /// the gateway is stopping, 1009 a message too big, 1011 no pong, 1013 reading
    /// too slowly).
    Closed { code: u16, reason: String },
}

/// Why a WebSocket could not be opened or used.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The server answered the upgrade with an HTTP error (401 without valid
    /// credentials, 503 when it holds too many sessions).
    #[error("the server refused the WebSocket with HTTP {status}: {body}")]
    Refused { status: u16, body: String },
    #[error("bad WebSocket address {0}")]
    Url(String),
    #[error("no WebSocket connection within {0:?}")]
    Timeout(Duration),
    #[error("WebSocket: {0}")]
    Protocol(String),
}

impl From<tungstenite::Error> for WsError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
                WsError::Refused { status, body }
            }
            other => WsError::Protocol(other.to_string()),
        }
    }
}

/// An open WebSocket to a gateway.
#[derive(Debug)]
pub struct WsClient {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Largest message the client accepts.
pub const MESSAGE_BYTES_MAX: usize = 1 << 20;

/// Connects to `url` (`ws://127.0.0.1:8080/ws/echo`), sending `authorization` as the
/// `Authorization` header (e.g. `Bearer <token>`), within `timeout`.
pub async fn connect(url: &str, authorization: Option<&str>, timeout: Duration) -> Result<WsClient, WsError> {
    match authorization {
        Some(auth) => connect_with(url, &[("authorization", auth)], timeout).await,
        None => connect_with(url, &[], timeout).await,
    }
}

/// Connects to `url` sending these request headers (e.g. the service token and
/// `X-User-Id` of an authenticating proxy), within `timeout`.
pub async fn connect_with(url: &str, headers: &[(&str, &str)], timeout: Duration) -> Result<WsClient, WsError> {
    let mut request = url.into_client_request().map_err(|e| WsError::Url(format!("{url}: {e}")))?;
    for (name, value) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| WsError::Url(format!("{name:?} is not a header name")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| WsError::Url(format!("the value of {name} is not a header value")))?;
        request.headers_mut().insert(name, value);
    }
    let config =
        WebSocketConfig::default().max_message_size(Some(MESSAGE_BYTES_MAX)).max_frame_size(Some(MESSAGE_BYTES_MAX));
    let (inner, _) =
        tokio::time::timeout(timeout, tokio_tungstenite::connect_async_with_config(request, Some(config), true))
            .await
            .map_err(|_| WsError::Timeout(timeout))??;
    Ok(WsClient { inner })
}

impl WsClient {
    /// Sends a text message.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<(), WsError> {
        Ok(self.inner.send(Message::Text(text.into().into())).await?)
    }
    /// Sends a binary message.
    pub async fn send_binary(&mut self, bytes: impl Into<Vec<u8>>) -> Result<(), WsError> {
        Ok(self.inner.send(Message::Binary(bytes.into().into())).await?)
    }
    /// The next message; `None` once the connection is gone without a close frame.
    /// Pings are answered here and not returned.
    pub async fn next(&mut self) -> Option<Result<WsFrame, WsError>> {
        loop {
            match self.inner.next().await? {
                Ok(Message::Text(t)) => return Some(Ok(WsFrame::Text(t.as_str().to_owned()))),
                Ok(Message::Binary(b)) => return Some(Ok(WsFrame::Binary(b.to_vec()))),
                Ok(Message::Close(frame)) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1005, String::new()));
                    return Some(Ok(WsFrame::Closed { code, reason }));
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return None,
                Err(e) => return Some(Err(e.into())),
            }
        }
    }
    /// The next message within `timeout` (`Err(Timeout)` past it).
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Option<WsFrame>, WsError> {
        match tokio::time::timeout(timeout, self.next()).await {
            Err(_) => Err(WsError::Timeout(timeout)),
            Ok(None) => Ok(None),
            Ok(Some(r)) => r.map(Some),
        }
    }
    /// Closes the session normally (1000) and waits (at most 5 s) for the server's
    /// answer, which it returns: its close code and reason, or `None` if the
    /// connection ended without one.
    pub async fn close(mut self) -> Result<Option<(u16, String)>, WsError> {
        let normal = tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        };
        self.inner.close(Some(normal)).await?;
        let answer = async {
            while let Some(Ok(msg)) = self.inner.next().await {
                if let Message::Close(frame) = msg {
                    return frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned()));
                }
            }
            None
        };
        Ok(tokio::time::timeout(Duration::from_secs(5), answer).await.unwrap_or(None))
    }
}
