//! The sync task.

pub mod policy;
