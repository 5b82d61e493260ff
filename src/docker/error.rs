//! The one error type of the Docker seam: a variant per step that can fail, carrying what a
//! reader needs to act on it. Messages never contain registry credentials.

/// What went wrong talking to the Docker daemon.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The host setting cannot be used (unknown scheme, socket file missing).
    #[error("cannot use docker host `{host}`: {source}")]
    Connect {
        host: String,
        source: bollard::errors::Error,
    },

    /// The daemon did not answer (version negotiation or ping failed).
    #[error("docker daemon at `{host}` is unreachable: {source}")]
    Unreachable {
        host: String,
        source: bollard::errors::Error,
    },

    /// The build context stream failed while it was being sent (e.g. the tar checker rejected
    /// an entry); the error is the context's own.
    #[error("build context could not be sent: {source}")]
    Context { source: std::io::Error },

    /// A RUN step exited non-zero. `message` is docker's text verbatim.
    #[error("step {step} `{instruction}` failed: {message}")]
    StepFailed {
        /// "3/5", as the classic builder numbers it.
        step: String,
        /// The instruction as docker echoed it, e.g. "RUN exit 3".
        instruction: String,
        message: String,
    },

    /// Any other build error (Dockerfile syntax, unknown target, missing file, …), docker's
    /// message verbatim.
    #[error("build failed: {message}")]
    BuildFailed { message: String },

    /// The caller's cancellation token fired; the request was dropped and the step's container
    /// is gone.
    #[error("cancelled")]
    Cancelled,

    /// Tagging an image failed.
    #[error("tagging `{source_image}` as `{target}` failed: {source}")]
    Tag {
        source_image: String,
        target: String,
        source: bollard::errors::Error,
    },

    /// The daemon or the registry refused or aborted a push.
    #[error("push of `{repository}:{tag}` failed: {message}")]
    Push {
        repository: String,
        tag: String,
        message: String,
    },

    /// The daemon or the registry refused or aborted a pull.
    #[error("pull of `{reference}` failed: {message}")]
    Pull { reference: String, message: String },

    /// Any other daemon call failed (transport error, unexpected status).
    #[error("docker {operation} failed: {source}")]
    Api {
        operation: &'static str,
        source: bollard::errors::Error,
    },
}
