//! Where images are pushed and with which credentials: ECR (authorization tokens fetched with
//! `GetAuthorizationToken` and cached until shortly before they expire, repositories created on
//! first push). Credentials never appear in an error message or a log line.

mod ecr;

pub use ecr::{EcrAuth, TOKEN_REFRESH_MARGIN};

/// A registry step that failed. No variant carries a password or a token.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("asking ECR for an authorization token failed: {detail}")]
    GetAuthorizationToken { detail: String },
    #[error("ECR answered GetAuthorizationToken without {missing}")]
    IncompleteAuthorization { missing: &'static str },
    /// The reason never quotes the token: it is the password.
    #[error("ECR's authorization token is not {expected}")]
    MalformedToken { expected: &'static str },
    #[error("creating ECR repository {repository} failed: {detail}")]
    CreateRepository { repository: String, detail: String },
}
