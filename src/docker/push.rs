//! Pushing a tagged image to its registry and reading back the manifest digest it got.

use bollard::query_parameters::PushImageOptionsBuilder;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::lines::ProgressLines;
use super::{DockerEngine, DockerError, RegistryCredentials};

impl DockerEngine {
    /// Pushes `repository:tag` and returns the manifest digest ("sha256:…") the registry stored.
    /// One line per layer state change goes to `on_line` (bollard 0.21 drops the layer id of push
    /// messages, so the lines read "Preparing", "Pushed", "Layer already exists" without it).
    pub async fn push(
        &self,
        repository: &str,
        tag: &str,
        credentials: Option<&RegistryCredentials>,
        on_line: &mut (dyn FnMut(&str) + Send),
        cancel: &CancellationToken,
    ) -> Result<String, DockerError> {
        let failed = |message: String| DockerError::Push {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            message,
        };
        let options = PushImageOptionsBuilder::new().tag(tag).build();
        let mut events = self.docker.push_image(
            repository,
            Some(options),
            credentials.map(RegistryCredentials::to_docker),
        );

        let mut progress = ProgressLines::default();
        let mut digest = None;
        loop {
            let event = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(DockerError::Cancelled),
                event = events.next() => event,
            };
            let info = match event {
                None => break,
                Some(Ok(info)) => info,
                Some(Err(bollard::errors::Error::DockerStreamError { error })) => {
                    return Err(failed(error));
                }
                Some(Err(bollard::errors::Error::DockerResponseServerError {
                    message, ..
                })) => {
                    return Err(failed(message));
                }
                Some(Err(source)) => {
                    return Err(DockerError::Api {
                        operation: "push",
                        source,
                    });
                }
            };
            let Some(status) = info.status else { continue };
            if let Some(pushed) = digest_in_status(&status) {
                digest = Some(pushed.to_owned());
            }
            let is_tick = info.progress_detail.is_some_and(|p| p.current.is_some());
            if let Some(line) = progress.line(None, &status, is_tick) {
                on_line(&line);
            }
        }
        digest.ok_or_else(|| failed("the daemon reported no manifest digest".to_owned()))
    }
}

/// The digest in the daemon's closing status "<tag>: digest: sha256:<hex> size: <bytes>".
fn digest_in_status(status: &str) -> Option<&str> {
    let (_, after) = status.split_once("digest: ")?;
    let digest = after.split_whitespace().next()?;
    let hex = digest.strip_prefix("sha256:")?;
    let is_sha256 = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
    is_sha256.then_some(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4a8d8f3c0b6e5d2f1a9c7b3e6d5f4a2c1b0e9d8c7f6a5b4c3d2e1f0a9b8c7d6e";

    #[test]
    fn digest_is_read_from_the_closing_status() {
        let status = format!("01JABC: digest: {DIGEST} size: 528");
        assert_eq!(digest_in_status(&status), Some(DIGEST));
    }

    #[test]
    fn statuses_without_a_digest_give_none() {
        assert_eq!(digest_in_status("Pushed"), None);
        assert_eq!(
            digest_in_status("The push refers to repository [127.0.0.1:5055/hello]"),
            None
        );
    }

    #[test]
    fn truncated_digest_is_rejected() {
        assert_eq!(
            digest_in_status("latest: digest: sha256:4a8d size: 528"),
            None
        );
    }
}
