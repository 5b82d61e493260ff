//! slipway's only seam to the Docker daemon: build with the classic builder (context streamed
//! in, log lines streamed out, cancellable), tag, push, pull, and prune, all through bollard.
//!
//! The daemon may be older than bollard (20.10 speaks API 1.41): `connect` negotiates.

mod build;
mod build_log;
mod credentials;
mod error;
mod lines;
mod prune;
mod pull;
mod push;

#[cfg(test)]
mod daemon_tests;

pub use build::{BuildRequest, BuiltImage, CPU_PERIOD_MICROS};
pub use credentials::RegistryCredentials;
pub use error::DockerError;
pub use prune::{APP_LABEL, PruneReport};

use bollard::Docker;
use bollard::query_parameters::TagImageOptionsBuilder;

/// A connection to one Docker daemon, at the API version both sides speak.
#[derive(Debug, Clone)]
pub struct DockerEngine {
    docker: Docker,
    /// The `docker.host` setting, for error messages.
    host: String,
}

impl DockerEngine {
    /// Connects to `host` ("unix:///var/run/docker.sock", "unix:///path", "tcp://…",
    /// "http://…") and negotiates the API version: bollard speaks a newer one than older
    /// daemons (20.10 speaks 1.41) accept.
    pub async fn connect(host: &str) -> Result<Self, DockerError> {
        let docker = Docker::connect_with_host(host).map_err(|source| DockerError::Connect {
            host: host.to_owned(),
            source,
        })?;
        let docker =
            docker
                .negotiate_version()
                .await
                .map_err(|source| DockerError::Unreachable {
                    host: host.to_owned(),
                    source,
                })?;
        tracing::debug!(host, version = %docker.client_version(), "connected to docker");
        Ok(Self {
            docker,
            host: host.to_owned(),
        })
    }

    /// Checks that the daemon answers.
    pub async fn ping(&self) -> Result<(), DockerError> {
        self.docker
            .ping()
            .await
            .map(drop)
            .map_err(|source| DockerError::Unreachable {
                host: self.host.clone(),
                source,
            })
    }

    /// Tags image `source` (an id or a reference) as `repository:tag`.
    pub async fn tag(&self, source: &str, repository: &str, tag: &str) -> Result<(), DockerError> {
        let options = TagImageOptionsBuilder::new()
            .repo(repository)
            .tag(tag)
            .build();
        self.docker
            .tag_image(source, Some(options))
            .await
            .map_err(|error| DockerError::Tag {
                source_image: source.to_owned(),
                target: format!("{repository}:{tag}"),
                source: error,
            })
    }
}
