//! Recording: one task per publisher that turns its media events into a file.
pub mod closed;
pub mod file;
pub mod naming;
pub mod orchestrator;
pub mod stream;
