//! Which HTTP/1 codec a side of the proxy uses: Parapet's own or hyper's. Chosen per side by
//! `--downstream-http1` (serving clients) and `--upstream-http1` (talking to plain HTTP/1.1
//! pools), so both `downstream` and `upstream` read it from here, with what both own codecs
//! share.

use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Parapet's own HTTP/1 codec or hyper's (the values of `--downstream-http1` and
/// `--upstream-http1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Http1Codec {
    /// Parapet's own codec; what it does not handle (streamed bodies, upgrades) goes to hyper.
    #[default]
    Parapet,
    /// hyper's, for everything.
    Hyper,
}

/// Writes every slice, with as few system calls as the socket allows, then flushes (a TLS
/// stream holds records until then).
pub(crate) async fn write_all<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = io.write_vectored(bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    io.flush().await
}
