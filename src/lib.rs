//! slipway: a build service for AWS ECS clusters in one binary. Every host runs `slipway serve`;
//! anyone sends an app's source (`.tgz`) to any node, an agent claims the build, runs
//! `docker build` on its host's daemon, pushes the image and records the outcome.
//!
//! With no AWS settings a node runs on embedded defaults: builds in SQLite, sources in a local
//! directory, the local Docker daemon.
//!
//! ```toml
//! # /etc/slipway/slipway.toml
//! listen = "127.0.0.1:7878"
//! data_dir = "/var/lib/slipway"
//! max_concurrent_builds = 2
//! [registry]
//! url = "registry.example.com:5000"
//! ```

pub mod agent;
pub mod api;
pub mod archive;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod context;
pub mod docker;
pub mod dockerignore;
pub mod intake;
pub mod lines;
pub mod logs;
pub mod model;
pub mod registry;
pub mod server;
pub mod sources;
pub mod store;
