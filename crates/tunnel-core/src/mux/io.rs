//! The tunnel IO as the mux task uses it: non-blocking reads and batched, vectored writes. The
//! mux reads and writes from one task, but its read and write futures are pending at the same
//! time, so it holds the IO as `tokio::io::split`'s two halves (which pass vectored writes
//! through: one TLS `send` per batch of frames, not one per frame header).

use super::*;

/// One read attempt that does not wait: `Pending` when nothing is readable right now.
pub(super) async fn read_now<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    // `read_buf` consumes nothing unless it completes, so polling it once and dropping it is
    // a non-blocking read.
    let mut read = std::pin::pin!(rd.read_buf(buf));
    std::future::poll_fn(|cx| Poll::Ready(std::future::Future::poll(read.as_mut(), cx))).await
}

/// Writes as much of `batch` as the tunnel takes (`Some(n)`), or flushes when it is empty
/// (`None`). One future, so the select loop borrows the writer once.
pub(super) async fn write_or_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    batch: &OutBatch,
) -> std::io::Result<Option<usize>> {
    if batch.is_empty() {
        return w.flush().await.map(|_| None);
    }
    let mut slices = [IoSlice::new(&[]); MAX_WRITE_SLICES];
    let n = batch.slices(&mut slices);
    w.write_vectored(&slices[..n]).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mux::batch::OutBatch;
    use std::pin::Pin;

    /// A writer that records how many slices each vectored write brought.
    #[derive(Default)]
    struct SliceCounter {
        writes: Vec<usize>,
    }

    impl AsyncRead for SliceCounter {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            _buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for SliceCounter {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.push(bufs.len());
            Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A batch of frames reaches the transport as one vectored write (one TLS `send` of whole
    /// records), not one write per frame header and payload.
    #[tokio::test]
    async fn the_write_half_passes_vectored_writes_through() {
        let (rd, mut wr) = tokio::io::split(SliceCounter::default());
        assert!(wr.is_write_vectored());
        let mut batch = OutBatch::default();
        for i in 0..6u8 {
            batch.push(Bytes::from(vec![i; 9]));
            batch.push(Bytes::from(vec![i; 16 * 1024]));
        }
        let n = write_or_flush(&mut wr, &batch).await.unwrap();
        assert_eq!(n, Some(6 * (9 + 16 * 1024)));
        assert_eq!(rd.unsplit(wr).writes, vec![12]);
    }
}
