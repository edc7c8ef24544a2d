//! Socket reading that keeps idle connections cheap.

use std::cell::RefCell;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, ReadBuf};

thread_local! {
    /// One read buffer per worker thread instead of one per connection: tens of thousands of
    /// idle sessions then hold no read buffers at all.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; 32 * 1024].into_boxed_slice());
}

/// Reads what is available into an exactly sized Vec; an empty Vec means end of stream.
/// Cancel-safe: dropping the future loses no data.
pub async fn read_some<R: AsyncRead + Unpin>(stream: &mut R) -> std::io::Result<Vec<u8>> {
    std::future::poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let mut buf = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().to_vec())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        })
    })
    .await
}
