//! The Google Places client, sans-IO: it is fed bytes and hands out bytes; the reactor moves
//! them. Only the TLS module (to come) names rustls types.

pub mod response;
