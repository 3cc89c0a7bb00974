//! The Backstop agent: the data plane of one instance.
//!
//! The agent registers its instance with the server, keeps a heartbeat,
//! polls for tasks and runs them with the engine: backups read the
//! instance's disks into the repository, recoveries write backups onto
//! them. It reaches the repository only through the agent API
//! ([`RemoteBackend`]), so a remote agent needs nothing but the server's
//! address, and chunks are encoded on the agent before they travel.

mod config;
mod recovery;
mod remote;
mod runner;

pub use config::{AgentConfig, DiskConfig, HooksConfig};
pub use remote::RemoteBackend;
pub use runner::run_agent;
