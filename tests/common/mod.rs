//! Stand-ins and helpers shared by the integration tests. Each test file that needs them
//! says `mod common;`; a file using only some of them must not warn about the rest.
#![allow(dead_code)]

pub mod admission;
pub mod iam;
pub mod metadata;
pub mod registry;
