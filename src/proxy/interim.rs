//! Interim (1xx) responses dropped on plain-HTTP upstream connections before awc reads them.
//!
//! awc's HTTP/1 client reads one response head per request and takes it as the final answer, so
//! a provider (or anything in between) that sends `103 Early Hints` or an unasked-for `100
//! Continue` first would have the tool get that interim head, and the real answer (and its usage)
//! would be lost. keybroker never forwards `Expect` or `Upgrade`, so every interim answer is
//! unsolicited and carries nothing a tool needs: [`InterimFilter`] sits between awc and the
//! socket and drops any `1xx` head (other than `101`, which awc is left to refuse) that arrives
//! where a response starts, so awc reads the final answer and it is metered as usual.
//!
//! Where a response starts: awc never pipelines, so the first bytes read after a request was
//! written are the start of its response. Over TLS the filter is not in the path (it would see
//! ciphertext); there awc speaks HTTP/2 to providers that offer it, and the `h2` crate skips
//! interim heads itself. An HTTP/1-only provider over TLS that sends one gets our 502
//! `upstream_bad_response` and the call is charged its hold (see `proxy::forward`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, Ready};

/// The most of interim heads kept while looking for their end.
const MAX_INTERIM_HEAD: usize = 64 * 1024;

/// An upstream connection that drops interim heads (see the module docs). Disabled, it passes
/// everything through untouched.
pub struct InterimFilter<T> {
    inner: T,
    enabled: bool,
    /// A request was written since the last read: the next bytes start its response.
    at_response_start: bool,
    /// Bytes were read since the last write.
    read_since_write: bool,
    /// Read from the socket, not yet given to awc.
    pending: Vec<u8>,
}

impl<T> std::fmt::Debug for InterimFilter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InterimFilter")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl<T> InterimFilter<T> {
    pub fn new(inner: T, enabled: bool) -> Self {
        Self {
            inner,
            enabled,
            at_response_start: false,
            read_since_write: true,
            pending: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn wrote(&mut self, n: usize) {
        if self.enabled && n > 0 && self.read_since_write {
            self.read_since_write = false;
            self.at_response_start = true;
        }
    }
}

/// What the start of `pending` is.
enum Head {
    /// An interim head of this many bytes: drop it.
    Interim(usize),
    /// Not enough bytes yet to tell.
    Undecided,
    /// A final head, or not HTTP at all: pass it on as it is.
    Final,
}

fn classify(pending: &[u8]) -> Head {
    const PREFIX: &[u8] = b"HTTP/1.";
    let shown = pending.len().min(PREFIX.len());
    if pending.get(..shown) != PREFIX.get(..shown) {
        return Head::Final;
    }
    // "HTTP/1.1 1xx"
    let Some(status) = pending.get(9..12) else {
        return Head::Undecided;
    };
    if pending.get(8) != Some(&b' ')
        || status.first() != Some(&b'1')
        || status == b"101"
        || !status.iter().all(u8::is_ascii_digit)
    {
        return Head::Final;
    }
    match memchr::memmem::find(pending, b"\r\n\r\n") {
        Some(end) => Head::Interim(end + 4),
        None => Head::Undecided,
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for InterimFilter<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.at_response_start && this.pending.is_empty() {
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                this.read_since_write = true;
            }
            return polled;
        }
        while this.at_response_start {
            match classify(&this.pending) {
                Head::Interim(n) => {
                    this.pending.drain(..n);
                    continue;
                }
                Head::Final => {
                    this.at_response_start = false;
                    break;
                }
                Head::Undecided if this.pending.len() > MAX_INTERIM_HEAD => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the upstream's interim response head is too large",
                    )));
                }
                Head::Undecided => {}
            }
            let mut scratch = [0u8; 8192];
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    // End of stream: whatever is left is awc's to judge.
                    this.at_response_start = false;
                }
                Poll::Ready(Ok(())) => {
                    this.read_since_write = true;
                    this.pending.extend_from_slice(rb.filled());
                }
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(this.pending.get(..n).unwrap_or_default());
        this.pending.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for InterimFilter<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = polled {
            this.wrote(n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.wrote(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: actix_rt::net::ActixStream> actix_rt::net::ActixStream for InterimFilter<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Ready::READABLE));
        }
        self.inner.poll_read_ready(cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        self.inner.poll_write_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn through_filter(answer: &[u8]) -> Vec<u8> {
        let (client, mut server) = tokio::io::duplex(64);
        let answer = answer.to_vec();
        let serve = tokio::spawn(async move {
            let mut req = [0u8; 4];
            server.read_exact(&mut req).await.unwrap();
            for piece in answer.chunks(5) {
                server.write_all(piece).await.unwrap();
            }
        });
        let mut f = InterimFilter::new(client, true);
        f.write_all(b"GET ").await.unwrap();
        let mut out = Vec::new();
        f.read_to_end(&mut out).await.unwrap();
        serve.await.unwrap();
        out
    }

    #[tokio::test]
    async fn interim_heads_are_dropped_and_the_final_answer_passes_whole() {
        let final_answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec();
        let mut sent =
            b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n".to_vec();
        sent.extend_from_slice(&final_answer);
        assert_eq!(through_filter(&sent).await, final_answer);
        // Not interim: passed through as it is.
        for other in [
            &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"garbage",
            b"HTTP/1.1 1",
        ] {
            assert_eq!(through_filter(other).await, other.to_vec());
        }
    }
}
