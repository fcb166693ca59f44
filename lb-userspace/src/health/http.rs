//! The HTTP/1.1 client of the probes: one `GET`, one response, every read
//! bounded. A health check needs the status line and at most the start of the
//! body, so this is all it does; a misbehaving backend (endless headers, a
//! 10 GiB body, a chunk size of 2^64) costs at most [`MAX_HEAD`] +
//! [`MAX_BODY`] bytes of memory, and the caller's timeout bounds the time.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::ProbeError;

/// Largest response head (status line + headers) accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most body bytes read; the expected text must be within them.
pub const MAX_BODY: usize = 64 * 1024;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;
const READ_SIZE: usize = 8 * 1024;

/// What the probe needs of a response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// At most [`MAX_BODY`] (or the cap given) bytes of the body.
    pub body: Vec<u8>,
    /// The body was longer than [`MAX_BODY`] (or may have been: a
    /// close-delimited body is not read to its end once the cap is reached).
    pub truncated: bool,
}

/// Sends `GET path` and reads the response, keeping at most `max_body`
/// bytes of the body ([`MAX_BODY`] for probes; the load poller reads whole
/// status documents). With `want_body` false the body is not read at all
/// (the status decides).
pub async fn exchange_capped<S>(
    io: S,
    host: &str,
    path: &str,
    want_body: bool,
    max_body: usize,
) -> Result<Response, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Conn::new(io, max_body);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: voxlb-health\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    conn.io
        .write_all(request.as_bytes())
        .await
        .map_err(ProbeError::Io)?;
    conn.io.flush().await.map_err(ProbeError::Io)?;

    let head = conn.read_head().await?;
    let head = parse_head(&head)?;
    let mut response = Response {
        status: head.status,
        body: Vec::new(),
        truncated: false,
    };
    if !want_body || !head.has_body() {
        return Ok(response);
    }
    match head.framing {
        Framing::Chunked => conn.read_chunked(&mut response).await?,
        Framing::Length(len) => conn.read_length(&mut response, len).await?,
        Framing::Close => conn.read_to_close(&mut response).await?,
    }
    Ok(response)
}

/// Whether `haystack` contains `needle` (an empty needle is always found).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Chunked,
    Length(u64),
    Close,
}

#[derive(Debug)]
struct Head {
    status: u16,
    framing: Framing,
}

impl Head {
    fn has_body(&self) -> bool {
        // RFC 9112 6.3: 1xx, 204 and 304 responses have no body.
        !(self.status < 200 || self.status == 204 || self.status == 304)
    }
}

fn bad(what: impl Into<String>) -> ProbeError {
    ProbeError::BadHttp(what.into())
}

fn parse_head(head: &[u8]) -> Result<Head, ProbeError> {
    let text = std::str::from_utf8(head).map_err(|_| bad("response head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    // "HTTP/1.1 200 OK"; the reason phrase may be empty or absent.
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!(
            "not an HTTP/1.x status line: {status_line:.80?}"
        )));
    }
    let code = parts.next().unwrap_or_default();
    let status = match code.parse::<u16>() {
        Ok(s) if code.len() == 3 && (100..=599).contains(&s) => s,
        _ => return Err(bad(format!("bad status code in {status_line:.80?}"))),
    };

    let mut length: Option<u64> = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(format!("bad header line {line:.80?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| bad(format!("bad Content-Length {value:.40?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides; anything before "chunked" (gzip...) would
            // only garble the text we look for, which then fails to match.
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    // Transfer-Encoding wins over Content-Length (RFC 9112 6.3).
    let framing = match (chunked, length) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::Close,
    };
    Ok(Head { status, framing })
}

/// A connection with a read buffer.
struct Conn<S> {
    io: S,
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// Most body bytes kept.
    max_body: usize,
}

impl<S: AsyncRead + Unpin> Conn<S> {
    fn new(io: S, max_body: usize) -> Self {
        Conn {
            io,
            buf: Vec::with_capacity(READ_SIZE),
            start: 0,
            max_body,
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> Result<usize, ProbeError> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + READ_SIZE, 0);
        let read = self.io.read(&mut self.buf[old..]).await;
        let n = match read {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the end of a
            // close-delimited body for many servers, and harmless for a probe
            // (a short Content-Length body is still caught below).
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => {
                self.buf.truncate(old);
                return Err(ProbeError::Io(e));
            }
        };
        self.buf.truncate(old + n);
        Ok(n)
    }

    async fn read_head(&mut self) -> Result<Vec<u8>, ProbeError> {
        let mut searched: usize = 0;
        loop {
            // Resume the search a little before where the last one stopped, in
            // case the CRLFCRLF straddles two reads.
            let from = searched.saturating_sub(3);
            if let Some(i) = find(&self.pending()[from..], b"\r\n\r\n") {
                let end = from + i;
                let head = self.pending()[..end].to_vec();
                self.consume(end + 4);
                return Ok(head);
            }
            searched = self.pending().len();
            if searched > MAX_HEAD {
                return Err(bad(format!("response head longer than {MAX_HEAD} bytes")));
            }
            if self.fill().await? == 0 {
                return Err(if searched == 0 {
                    bad("connection closed without a response")
                } else {
                    bad("connection closed inside the response head")
                });
            }
        }
    }

    /// Moves up to `n` body bytes into `out` (respecting the body cap);
    /// returns how many were taken from the stream.
    async fn take(&mut self, out: &mut Response, n: u64) -> Result<u64, ProbeError> {
        let mut left = n;
        while left > 0 {
            if self.pending().is_empty() && self.fill().await? == 0 {
                return Err(bad("connection closed inside the body"));
            }
            let room = self.max_body - out.body.len();
            let avail = self.pending().len() as u64;
            let k = left.min(avail).min(room as u64) as usize;
            if k == 0 {
                // The cap is reached with body bytes still to come.
                out.truncated = true;
                return Ok(n - left);
            }
            out.body.extend_from_slice(&self.pending()[..k]);
            self.consume(k);
            left -= k as u64;
        }
        Ok(n)
    }

    async fn read_length(&mut self, out: &mut Response, len: u64) -> Result<(), ProbeError> {
        self.take(out, len).await?;
        Ok(())
    }

    async fn read_to_close(&mut self, out: &mut Response) -> Result<(), ProbeError> {
        loop {
            if self.pending().is_empty() && self.fill().await? == 0 {
                return Ok(());
            }
            let room = self.max_body - out.body.len();
            if room == 0 {
                out.truncated = true;
                return Ok(());
            }
            let k = self.pending().len().min(room);
            out.body.extend_from_slice(&self.pending()[..k]);
            self.consume(k);
        }
    }

    async fn read_chunked(&mut self, out: &mut Response) -> Result<(), ProbeError> {
        // Every chunk but the last adds at least one byte to the body, so this
        // loop runs at most max_body + 1 times.
        loop {
            let line = self.read_line(MAX_CHUNK_LINE).await?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = u64::from_str_radix(size_text, 16)
                .map_err(|_| bad(format!("bad chunk size {size_text:.40?}")))?;
            if size == 0 {
                // Trailers are of no interest; the connection is closed next.
                return Ok(());
            }
            if self.take(out, size).await? < size {
                return Ok(()); // truncated at the cap
            }
            let end = self.read_line(2).await?;
            if !end.is_empty() {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    }

    /// One CRLF-terminated line, without the CRLF.
    async fn read_line(&mut self, max: usize) -> Result<String, ProbeError> {
        loop {
            if let Some(i) = find(self.pending(), b"\r\n") {
                let line = String::from_utf8_lossy(&self.pending()[..i]).into_owned();
                self.consume(i + 2);
                return Ok(line);
            }
            if self.pending().len() > max {
                return Err(bad(format!("line longer than {max} bytes in chunked body")));
            }
            if self.fill().await? == 0 {
                return Err(bad("connection closed inside a chunked body"));
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `exchange` against a peer that answers `response` (then closes).
    async fn answer(response: &[u8]) -> Result<Response, ProbeError> {
        let (client, mut server) = tokio::io::duplex(256 * 1024);
        let response = response.to_vec();
        let peer = tokio::spawn(async move {
            let mut req = vec![0u8; 1024];
            let n = server.read(&mut req).await.unwrap();
            req.truncate(n);
            let _ = server.write_all(&response).await;
            req
        });
        let got = exchange_capped(
            client,
            "127.0.0.1:8140",
            "/status/v1/simple",
            true,
            MAX_BODY,
        )
        .await;
        let req = peer.await.unwrap();
        let req = String::from_utf8(req).unwrap();
        assert!(
            req.starts_with("GET /status/v1/simple HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\nHost: 127.0.0.1:8140\r\n"), "{req}");
        assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
        assert!(req.contains("\r\nUser-Agent: voxlb-health\r\n"), "{req}");
        got
    }

    #[tokio::test]
    async fn content_length_body() {
        let r = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nrunning")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"running");
        assert!(!r.truncated);
    }

    #[tokio::test]
    async fn chunked_body_with_extension_and_trailer() {
        let r = answer(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;x=y\r\nrun\r\n4\r\nning\r\n0\r\nX-Trailer: 1\r\n\r\n",
        )
        .await
        .unwrap();
        assert_eq!(r.body, b"running");
    }

    #[tokio::test]
    async fn close_delimited_body() {
        let r = answer(b"HTTP/1.0 503 Service Unavailable\r\n\r\nerror")
            .await
            .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, b"error");
    }

    #[tokio::test]
    async fn no_body_statuses() {
        let r = answer(b"HTTP/1.1 204 No Content\r\n\r\n").await.unwrap();
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
    }

    #[tokio::test]
    async fn body_capped() {
        let mut resp = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'a', 100_000));
        let r = answer(&resp).await.unwrap();
        assert_eq!(r.body.len(), MAX_BODY);
        assert!(r.truncated);
    }

    #[tokio::test]
    async fn short_content_length_body_is_an_error() {
        let e = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nrun")
            .await
            .unwrap_err();
        assert!(matches!(e, ProbeError::BadHttp(_)), "{e}");
    }

    #[tokio::test]
    async fn malformed_responses() {
        for resp in [
            &b""[..],
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nrunning\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n",
        ] {
            let e = answer(resp).await.unwrap_err();
            assert!(
                matches!(e, ProbeError::BadHttp(_)),
                "{:?}: {e}",
                String::from_utf8_lossy(resp)
            );
        }
    }

    #[tokio::test]
    async fn endless_head_is_bounded() {
        let mut resp = b"HTTP/1.1 200 OK\r\n".to_vec();
        resp.extend(std::iter::repeat_n(b'x', MAX_HEAD * 2));
        let e = answer(&resp).await.unwrap_err();
        assert!(matches!(e, ProbeError::BadHttp(_)), "{e}");
    }

    #[test]
    fn contains_finds_substrings() {
        assert!(contains(b"status: running\n", b"running"));
        assert!(contains(b"", b""));
        assert!(!contains(b"runnin", b"running"));
    }
}
