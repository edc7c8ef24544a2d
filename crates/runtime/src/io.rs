//! Socket reading that keeps idle connections cheap, and the TCP options tokio lacks.

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

/// Sets an `IPPROTO_TCP` option with an integer value (`TCP_DEFER_ACCEPT`,
/// `TCP_USER_TIMEOUT`, ...), which neither tokio nor socket2 exposes. Linux only; elsewhere a
/// no-op.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
pub fn set_tcp_option(
    socket: &impl std::os::fd::AsRawFd,
    option: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(std::io::Error::other)?;
    // SAFETY: the descriptor is open for the duration of the call (`socket` is borrowed), and
    // the option value is a live, properly aligned c_int whose size is passed as its length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn set_tcp_option<S>(_: &S, _: i32, _: i32) -> std::io::Result<()> {
    Ok(())
}

/// `TCP_DEFER_ACCEPT`.
#[cfg(target_os = "linux")]
pub const TCP_DEFER_ACCEPT: i32 = libc::TCP_DEFER_ACCEPT;
#[cfg(not(target_os = "linux"))]
pub const TCP_DEFER_ACCEPT: i32 = 0;
/// `TCP_USER_TIMEOUT` (milliseconds).
#[cfg(target_os = "linux")]
pub const TCP_USER_TIMEOUT: i32 = libc::TCP_USER_TIMEOUT;
#[cfg(not(target_os = "linux"))]
pub const TCP_USER_TIMEOUT: i32 = 0;
