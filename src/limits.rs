//! Every fixed limit of the herd, once, each with the reason for its value. What an operator may
//! change lives in [`crate::config::Limits`] and the `places:` settings instead; these are the
//! values a driver or the core needs but no deployment has a reason to tune. The README's
//! Limits table points here.

use std::time::Duration;

/// Size of a driver's shared read buffer: complete lines are handled straight from it. 64 KiB
/// holds hundreds of pipelined lines per read and is what the kernel's socket buffers hand over
/// in one call anyway.
pub const READ_CHUNK: usize = 64 << 10;

/// Connections accepted per turn before other sockets get their turn: a connect flood cannot
/// starve the connections already open.
pub const ACCEPT_BUDGET: usize = 1024;

/// After an accept error such as "too many open files", wait this long before trying again, so
/// the loop does not spin on an error that only a closed connection can clear.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// How long a connection closed for a protocol error keeps draining its input after the reply,
/// so the reply is not lost to the reset a close with unread input causes.
pub const LINGER: Duration = Duration::from_millis(500);

/// Input discarded while lingering before the connection is cut: a client that keeps sending
/// after its error reply cannot hold the connection open for ever.
pub const LINGER_BYTES: usize = 1 << 20;

/// How long a shutdown waits for replies and floods already computed to be written: long enough
/// for any reader that is reading, short enough for a supervisor's stop timeout.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Capacity above which an emptied client output buffer is released rather than kept: a burst
/// of large WHATSAT replies must not pin megabytes per idle connection, while the common case
/// (a few AT lines) reuses its buffer without allocating.
pub const KEEP_OUTPUT: usize = 16 << 10;

/// Idle keep-alive connections to Places kept for reuse: enough for the usual concurrency of
/// WHATSATs without holding many TLS sessions (tens of KiB each) open for nothing.
pub const MAX_IDLE: usize = 8;

/// How long resolved addresses of the Places host are used before the name is resolved again:
/// Google's records live for minutes, and resolving costs a helper thread or a blocking-pool
/// task, never the loop.
pub const DNS_TTL: Duration = Duration::from_secs(300);

/// Most reply bytes one feed of a connection's input appends before its remaining lines are held
/// back to a later turn. A WHATSAT answered from the Places cache turns 20 bytes in into up to
/// 2 MiB out; without this pause one read of pipelined WHATSATs would queue gigabytes and hold the
/// loop for seconds before the output limit is checked. IAMATs (about 2 bytes out per byte in,
/// reads of at most [`READ_CHUNK`]) never reach it, so the hot path is unchanged.
pub const FEED_OUTPUT: usize = 256 << 10;
