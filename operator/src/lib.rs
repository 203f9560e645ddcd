//! Parapet operator.
