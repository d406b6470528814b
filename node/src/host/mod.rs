//! The host of a shard: what drives a [`Shard`](crate::shard::Shard) between its inputs and
//! its outputs, over three seams — the peer transport ([`PeerTransport`]), the log (the
//! shard's [`AsyncLogBackend`](keel_engine::log_backend::AsyncLogBackend)) and the clock
//! ([`Clock`]).
//!
//! Two hosts wait for their inputs differently and hand them over the same way, through
//! this module:
//! - the runtime's shard thread: a tokio `select!` over the peer sockets, the client
//!   requests, the log's completions and a tick interval, with the TCP
//!   [`Transport`](crate::transport::Transport), an `Arc<Wal>` and a [`SystemClock`];
//! - the simulation ([`crate::sim`]): a seeded step loop over a simulated network, in-memory
//!   logs and a simulated clock, a whole cluster in one thread.
//!
//! What they share:
//! - [`run_rounds`], after every input: rounds until the shard has nothing more to do now,
//!   each round's messages to the transport and its answers to the caller, then the
//!   snapshot chunks moved (transfers lost with a connection abandoned, the next chunks
//!   sent where there is room, refused ones handed back) and unreachable peers reported;
//! - [`poll_durable`]: the log store's next durable append fed to the shard;
//! - [`Ticker`]: the shard's ticks, as many as the clock says are due (at most one per
//!   call), every [`HOUSEKEEPING_TICKS`]-th a housekeeping tick, on which the host runs
//!   [`housekeeping`] and [`purge_log`] (the runtime also its member-list work).

mod clock;
mod rounds;
mod ticker;
mod transport;

pub use clock::{Clock, SystemClock};
pub use rounds::{housekeeping, poll_durable, purge_log, run_rounds};
pub use ticker::{HOUSEKEEPING_TICKS, Ticked, Ticker};
pub use transport::PeerTransport;
