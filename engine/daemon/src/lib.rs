//! The referee daemon: drives the sans-IO engine core (`referee-engine`) from the network.
//!
//! - [`start`]: assembles a daemon from settings ([`Daemon::start`]): engine, QUIC endpoint,
//!   HTTP server; [`pose`] builds the pose estimators the engine is given.
//! - [`core`]: the engine with its [`core::EventRouter`] (engine events to agents and the
//!   feed), the async wait for pipeline room, the idle-session janitor.
//! - [`quic`]: agents and feed subscribers over QUIC; [`http`]: `/healthz`, `/status`,
//!   `/metrics`, the feed page and Server-Sent Events, [`http_auth`] the feed token they
//!   require, [`http_server`] the accept loop with its timeouts and connection cap; [`feed`]:
//!   the fan-out hub.
//! - [`history`]: the recent phrases with the referee's calls beside our verdicts, persisted
//!   in the data dir, and the agreement between the two; [`review`]: their HTTP side
//!   (`/phrases`, each phrase's overlay and timeline, the referee's call from the page).
//! - [`owners`]: which connection holds which session (resume secrets, signal budgets);
//!   [`conns`]: the caps on connections, in all and per address.
//! - [`map`]: the one mapping between engine values and wire messages.
//! - [`nats`]: tournament mode (live subjects by piste, the JetStream verdict log with its
//!   on-disk outbox, the piste registry heartbeat), when `nats.url` is set.
//! - [`record`]: the phrase recorder (every phrase as a replayable recording, format in
//!   `referee-record`), fed by [`Core::submit`], [`Core::signal`] and the router; [`replay`]:
//!   a recording run through the engine again.
//! - [`offline`]: the same engine driven from frames in this process (analyze, benches).

pub mod conns;
pub mod core;
pub mod feed;
pub mod history;
pub mod http;
pub mod http_auth;
pub mod http_server;
pub mod map;
pub mod nats;
pub mod offline;
pub mod owners;
pub mod pose;
pub mod quic;
pub mod record;
pub mod replay;
pub mod review;
pub mod start;

pub use core::{Core, EventRouter};
pub use start::{engine_config, load_engine_config, Daemon, DaemonError};
