// SPDX-License-Identifier: Apache-2.0
//! A minimal blocking HTTP/1.1 client for the agent's local API.
//!
//! One request per connection (`Connection: close`), JSON bodies only. It
//! understands `Content-Length`, `chunked` and read-to-end replies, which
//! covers what the agent sends. It exists so that short-lived callers (the
//! CLI, the CNI plugin) start fast and pull in no HTTP stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ErrorReply;

/// Largest reply accepted, so that a confused server cannot exhaust memory.
const MAX_REPLY: usize = 16 << 20;

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

/// Errors of the local API client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No agent answered at any endpoint tried.
    #[error("cannot reach weaver at {tried}: {source}")]
    Connect {
        /// The endpoints tried, comma-separated.
        tried: String,
        /// The error of the last attempt.
        #[source]
        source: std::io::Error,
    },
    /// The connection broke during the exchange.
    #[error("talk to weaver at {endpoint}")]
    Io {
        /// The endpoint in use.
        endpoint: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The reply was not valid HTTP/1.1 as this client understands it.
    #[error("malformed reply from weaver: {0}")]
    Malformed(String),
    /// The agent answered with an error status.
    #[error("weaver refused {what}: {message} (HTTP {status})")]
    Status {
        /// Method and path of the request.
        what: String,
        /// HTTP status code.
        status: u16,
        /// The `error` field of the reply, or its raw body.
        message: String,
    },
    /// A body could not be encoded or decoded as the expected JSON.
    #[error("decode reply of {what}")]
    Json {
        /// Method and path of the request.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// Status and body of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Client for one or more candidate endpoints, tried in order.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Vec<Endpoint>,
    timeout: Duration,
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Client {
    /// A client that tries `endpoints` in order and uses the first that accepts.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self {
            endpoints,
            timeout: Duration::from_secs(10),
        }
    }

    /// Sets the read/write timeout of each exchange (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// `GET path`, decoding a JSON reply; error statuses become [`Error::Status`].
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        let what = format!("GET {path}");
        let reply = self.request("GET", path, None)?;
        decode(&what, reply)
    }

    /// `POST path` with a JSON body, decoding a JSON reply.
    pub fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, Error> {
        let what = format!("POST {path}");
        let body = serde_json::to_vec(body).map_err(|source| Error::Json {
            what: what.clone(),
            source,
        })?;
        let reply = self.request("POST", path, Some(&body))?;
        decode(&what, reply)
    }

    /// Sends one raw request and returns the status and body, whatever the status.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Response, Error> {
        let (mut stream, endpoint) = self.connect()?;
        let io = |source| Error::Io {
            endpoint: endpoint.to_string(),
            source,
        };
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: weave\r\nConnection: close\r\n");
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut raw = Vec::new();
        match &mut stream {
            Stream::Unix(s) => exchange(s, &head, body, &mut raw).map_err(io)?,
            Stream::Tcp(s) => exchange(s, &head, body, &mut raw).map_err(io)?,
        }
        parse_response(&raw)
    }

    fn connect(&self) -> Result<(Stream, &Endpoint), Error> {
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no endpoint configured");
        for endpoint in &self.endpoints {
            let attempt = match endpoint {
                Endpoint::Unix(path) => UnixStream::connect(path).and_then(|s| {
                    s.set_read_timeout(Some(self.timeout))?;
                    s.set_write_timeout(Some(self.timeout))?;
                    Ok(Stream::Unix(s))
                }),
                Endpoint::Tcp(addr) => {
                    TcpStream::connect_timeout(addr, self.timeout).and_then(|s| {
                        s.set_read_timeout(Some(self.timeout))?;
                        s.set_write_timeout(Some(self.timeout))?;
                        Ok(Stream::Tcp(s))
                    })
                }
            };
            match attempt {
                Ok(stream) => return Ok((stream, endpoint)),
                Err(e) => last = e,
            }
        }
        let tried = self
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::Connect {
            tried,
            source: last,
        })
    }
}

fn exchange<S: Read + Write>(
    stream: &mut S,
    head: &str,
    body: Option<&[u8]>,
    raw: &mut Vec<u8>,
) -> std::io::Result<()> {
    stream.write_all(head.as_bytes())?;
    if let Some(body) = body {
        stream.write_all(body)?;
    }
    stream.flush()?;
    let mut limited = stream.take(MAX_REPLY as u64 + 1);
    limited.read_to_end(raw)?;
    Ok(())
}

fn decode<T: DeserializeOwned>(what: &str, reply: Response) -> Result<T, Error> {
    if !(200..300).contains(&reply.status) {
        let message = serde_json::from_slice::<ErrorReply>(&reply.body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&reply.body).trim().to_string());
        return Err(Error::Status {
            what: what.to_string(),
            status: reply.status,
            message,
        });
    }
    serde_json::from_slice(&reply.body).map_err(|source| Error::Json {
        what: what.to_string(),
        source,
    })
}

/// Parses a complete HTTP/1.1 reply held in `raw`.
pub(crate) fn parse_response(raw: &[u8]) -> Result<Response, Error> {
    let malformed = |m: &str| Error::Malformed(m.to_string());
    if raw.len() > MAX_REPLY {
        return Err(malformed("reply larger than 16 MiB"));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head =
        std::str::from_utf8(&raw[..split]).map_err(|_| malformed("headers are not UTF-8"))?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    match parts.next() {
        Some(v) if v.starts_with("HTTP/1.") => {}
        _ => return Err(malformed("status line does not start with HTTP/1.")),
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("bad status code"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed("header line without a colon"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| malformed("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| malformed("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, Error> {
    let malformed = |m: &str| Error::Malformed(m.to_string());
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| malformed("chunk size line not terminated"))?;
        let line =
            std::str::from_utf8(&data[..eol]).map_err(|_| malformed("chunk size not UTF-8"))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| malformed("bad chunk size"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = data
            .get(..size)
            .ok_or_else(|| malformed("chunk shorter than its size"))?;
        out.extend_from_slice(chunk);
        data = data
            .get(size + 2..)
            .ok_or_else(|| malformed("chunk not followed by CRLF"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_reply() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}trailing";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn parses_chunked_reply() {
        let raw = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.body, b"abcde");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_response(b"SMTP 220 hello\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn error_status_carries_message() {
        let reply = Response {
            status: 400,
            body: br#"{"error":"bad address"}"#.to_vec(),
        };
        let err = decode::<ErrorReply>("POST /connect", reply).unwrap_err();
        assert_eq!(
            err.to_string(),
            "weaver refused POST /connect: bad address (HTTP 400)"
        );
    }
}
