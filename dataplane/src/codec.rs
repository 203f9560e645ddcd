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

/// Writes the line `content-length: N\r\n`. By hand: `write!` through `core::fmt` cost a few
/// hundred instructions, once or twice for every request.
pub(crate) fn push_content_length(out: &mut Vec<u8>, n: u64) {
    // u64::MAX has 20 digits.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_are_written_as_display_writes_them() {
        let mut rng = rand::rng();
        let mut ns = vec![0, 1, 9, 10, 99, 100, 1024, u64::MAX - 1, u64::MAX];
        ns.extend((0..1000).map(|_| {
            rand::Rng::random::<u64>(&mut rng) >> rand::Rng::random_range(&mut rng, 0..64)
        }));
        for n in ns {
            let mut out = b"x".to_vec();
            push_content_length(&mut out, n);
            assert_eq!(out, format!("xcontent-length: {n}\r\n").into_bytes());
        }
    }
}
