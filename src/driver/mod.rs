//! Drivers.
pub mod mio;
