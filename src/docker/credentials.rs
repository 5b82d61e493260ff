//! Registry credentials as the daemon wants them, kept out of every log and error message.

use std::fmt;

use bollard::auth::DockerCredentials;

/// Basic-auth credentials for one registry (for ECR: user `AWS` and the authorization token).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
    /// The registry host, e.g. "123456789012.dkr.ecr.us-east-1.amazonaws.com" or "127.0.0.1:5055".
    pub server: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("server", &self.server)
            .finish()
    }
}

impl RegistryCredentials {
    /// The X-Registry-Auth payload bollard encodes for the daemon.
    pub(crate) fn to_docker(&self) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(self.server.clone()),
            ..DockerCredentials::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_does_not_print_the_password() {
        let credentials = RegistryCredentials {
            username: "AWS".into(),
            password: "123456789012-auth-token".into(),
            server: "127.0.0.1:5055".into(),
        };
        let printed = format!("{credentials:?}");
        assert!(!printed.contains("123456789012-auth-token"), "{printed}");
        assert!(
            printed.contains("AWS") && printed.contains("127.0.0.1:5055"),
            "{printed}"
        );
    }
}
