//! Route matching.
