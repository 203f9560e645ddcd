//! Which HTTP/1 codec a side of the proxy uses: Parapet's own or hyper's. Chosen per side by
//! `--downstream-http1` (serving clients) and `--upstream-http1` (talking to plain HTTP/1.1
//! pools), so both `downstream` and `upstream` read it from here.

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
