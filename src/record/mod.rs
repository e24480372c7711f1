//! Recording: one task per publisher that turns its media events into a file.
pub mod closed;
pub mod disk;
pub mod file;
pub mod hooks;
pub mod manifest;
pub mod naming;
pub mod offsets;
pub mod orchestrator;
pub mod quiet;
pub mod retention;
pub mod stream;
pub(crate) mod writer;
