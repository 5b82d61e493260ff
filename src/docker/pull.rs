//! Pulling an image, e.g. a previous build's image to serve as `cache_from`.

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures_util::StreamExt;

use super::{DockerEngine, DockerError, RegistryCredentials};

impl DockerEngine {
    /// Pulls `reference` ("repo", "repo:tag" or "repo@sha256:…"; a bare name means ":latest",
    /// as with the docker CLI, never "every tag").
    pub async fn pull(
        &self,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), DockerError> {
        let (image, tag) = split_reference(reference);
        let options = CreateImageOptionsBuilder::new()
            .from_image(image)
            .tag(tag)
            .build();
        let mut events = self.docker.create_image(
            Some(options),
            None,
            credentials.map(RegistryCredentials::to_docker),
        );
        while let Some(event) = events.next().await {
            let failed = |message: String| DockerError::Pull {
                reference: reference.to_owned(),
                message,
            };
            match event {
                Ok(_) => {}
                Err(bollard::errors::Error::DockerStreamError { error }) => {
                    return Err(failed(error));
                }
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
                    return Err(failed(message));
                }
                Err(source) => {
                    return Err(DockerError::Api {
                        operation: "pull",
                        source,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Splits a reference into the daemon's `fromImage` and `tag` parameters. A digest reference
/// stays whole with an empty tag.
fn split_reference(reference: &str) -> (&str, &str) {
    if reference.contains('@') {
        return (reference, "");
    }
    let name_start = reference.rfind('/').map_or(0, |slash| slash + 1);
    match reference[name_start..].rfind(':') {
        Some(colon) => {
            let at = name_start + colon;
            (&reference[..at], &reference[at + 1..])
        }
        None => (reference, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_split_off() {
        assert_eq!(
            split_reference("127.0.0.1:5055/hello:01J"),
            ("127.0.0.1:5055/hello", "01J")
        );
    }

    #[test]
    fn registry_port_is_not_a_tag() {
        assert_eq!(
            split_reference("127.0.0.1:5055/hello"),
            ("127.0.0.1:5055/hello", "latest")
        );
    }

    #[test]
    fn digest_reference_stays_whole() {
        let reference =
            "hello@sha256:4a8d8f3c0b6e5d2f1a9c7b3e6d5f4a2c1b0e9d8c7f6a5b4c3d2e1f0a9b8c7d6e";
        assert_eq!(split_reference(reference), (reference, ""));
    }
}
