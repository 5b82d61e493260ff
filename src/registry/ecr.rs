//! ECR credentials for docker push: `GetAuthorizationToken` gives base64 `AWS:password` valid
//! for hours, so one token is shared by every push until it nears `expires_at`.

use std::time::{Duration, SystemTime};

use aws_sdk_ecr::Client;
use aws_sdk_ecr::error::DisplayErrorContext;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::sync::Mutex;

use super::RegistryError;
use crate::config::AwsSettings;
use crate::docker::RegistryCredentials;
use crate::model::AppName;

/// A token is replaced this long before ECR says it expires, so a push that starts with it
/// (and may run for minutes on a large image) never meets an expired token half-way.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(30 * 60);

/// Pushes to ECR: credentials and repositories.
pub struct EcrAuth {
    client: Client,
    /// Push here instead of ECR's `proxyEndpoint` when set (`aws.registry_endpoint`, tests).
    registry_endpoint: String,
    /// Prepended to an app's name to make its repository name (`aws.repo_prefix`).
    repo_prefix: String,
    token: TokenCache,
}

impl EcrAuth {
    pub fn new(sdk: &aws_config::SdkConfig, settings: &AwsSettings) -> Self {
        EcrAuth {
            client: Client::new(sdk),
            registry_endpoint: settings.registry_endpoint.clone(),
            repo_prefix: settings.repo_prefix.clone(),
            token: TokenCache::default(),
        }
    }

    /// Credentials for `docker push`, from the cache while the token is fresh. Concurrent
    /// callers with a stale cache share one `GetAuthorizationToken` call.
    pub async fn credentials(&self) -> Result<RegistryCredentials, RegistryError> {
        self.token
            .get_or_fetch(SystemTime::now(), || self.fetch_token())
            .await
    }

    /// The repository an app's images go to: `{aws.repo_prefix}{app}`.
    pub fn repository(&self, app: &AppName) -> String {
        format!("{}{}", self.repo_prefix, app)
    }

    /// Creates the app's repository unless it exists already; returns its name.
    pub async fn ensure_repository(&self, app: &AppName) -> Result<String, RegistryError> {
        let repository = self.repository(app);
        match self
            .client
            .create_repository()
            .repository_name(&repository)
            .send()
            .await
        {
            Ok(_) => Ok(repository),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_repository_already_exists_exception()) =>
            {
                Ok(repository)
            }
            Err(err) => Err(RegistryError::CreateRepository {
                repository,
                detail: DisplayErrorContext(err).to_string(),
            }),
        }
    }

    async fn fetch_token(&self) -> Result<CachedToken, RegistryError> {
        let answer = self
            .client
            .get_authorization_token()
            .send()
            .await
            .map_err(|err| RegistryError::GetAuthorizationToken {
                detail: DisplayErrorContext(err).to_string(),
            })?;
        let data =
            answer
                .authorization_data()
                .first()
                .ok_or(RegistryError::IncompleteAuthorization {
                    missing: "authorization data",
                })?;
        let token = data
            .authorization_token()
            .ok_or(RegistryError::IncompleteAuthorization { missing: "a token" })?;
        let expires_at = data
            .expires_at()
            .and_then(|at| SystemTime::try_from(*at).ok())
            .ok_or(RegistryError::IncompleteAuthorization {
                missing: "an expiry time",
            })?;
        let server = if self.registry_endpoint.is_empty() {
            let endpoint = data
                .proxy_endpoint()
                .ok_or(RegistryError::IncompleteAuthorization {
                    missing: "a proxy endpoint",
                })?;
            host_of(endpoint).to_owned()
        } else {
            self.registry_endpoint.clone()
        };
        let (username, password) = decode_token(token)?;
        Ok(CachedToken {
            credentials: RegistryCredentials {
                username,
                password,
                server,
            },
            expires_at,
        })
    }
}

/// Splits an ECR authorization token, base64 of `user:password`, into its two halves.
fn decode_token(token: &str) -> Result<(String, String), RegistryError> {
    let decoded = BASE64
        .decode(token.trim())
        .map_err(|_| RegistryError::MalformedToken { expected: "base64" })?;
    let decoded = String::from_utf8(decoded)
        .map_err(|_| RegistryError::MalformedToken { expected: "UTF-8" })?;
    match decoded.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => {
            Ok((user.to_owned(), password.to_owned()))
        }
        _ => Err(RegistryError::MalformedToken {
            expected: "of the form user:password",
        }),
    }
}

/// `https://123456789012.dkr.ecr.us-east-1.amazonaws.com/` → the host docker tags with.
fn host_of(endpoint: &str) -> &str {
    let without_scheme = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    without_scheme.split('/').next().unwrap_or(without_scheme)
}

struct CachedToken {
    credentials: RegistryCredentials,
    expires_at: SystemTime,
}

impl CachedToken {
    fn is_fresh_at(&self, now: SystemTime) -> bool {
        self.expires_at
            .checked_sub(TOKEN_REFRESH_MARGIN)
            .is_some_and(|refresh_at| now < refresh_at)
    }
}

/// The last token, behind an async lock held across a fetch so concurrent callers wait for
/// the one fetch rather than each asking ECR.
#[derive(Default)]
struct TokenCache {
    current: Mutex<Option<CachedToken>>,
}

impl TokenCache {
    async fn get_or_fetch<F, Fut>(
        &self,
        now: SystemTime,
        fetch: F,
    ) -> Result<RegistryCredentials, RegistryError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedToken, RegistryError>>,
    {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref().filter(|token| token.is_fresh_at(now)) {
            return Ok(token.credentials.clone());
        }
        let token = fetch().await?;
        let credentials = token.credentials.clone();
        *current = Some(token);
        Ok(credentials)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MOTO_TOKEN: &str = "QVdTOjEyMzQ1Njc4OTAxMi1hdXRoLXRva2Vu";

    fn token_expiring_at(expires_at: SystemTime, password: &str) -> CachedToken {
        CachedToken {
            credentials: RegistryCredentials {
                username: "AWS".into(),
                password: password.into(),
                server: "127.0.0.1:5055".into(),
            },
            expires_at,
        }
    }

    #[test]
    fn a_token_decodes_to_user_and_password() {
        let (user, password) = decode_token(MOTO_TOKEN).unwrap();
        assert_eq!(user, "AWS");
        assert_eq!(password, "123456789012-auth-token");
    }

    #[test]
    fn a_password_may_contain_colons() {
        let token = BASE64.encode("AWS:a:b:c");
        assert_eq!(decode_token(&token).unwrap().1, "a:b:c");
    }

    #[test]
    fn a_malformed_token_is_refused_without_quoting_it() {
        for token in [
            "not base64!",
            &BASE64.encode("no-colon-secret"),
            &BASE64.encode("AWS:"),
        ] {
            let err = decode_token(token).unwrap_err();
            assert!(matches!(err, RegistryError::MalformedToken { .. }), "{err}");
            assert!(!err.to_string().contains("secret"), "{err}");
            assert!(!err.to_string().contains(token), "{err}");
        }
    }

    #[test]
    fn the_server_is_the_host_of_the_proxy_endpoint() {
        assert_eq!(
            host_of("https://123456789012.dkr.ecr.us-east-1.amazonaws.com"),
            "123456789012.dkr.ecr.us-east-1.amazonaws.com"
        );
        assert_eq!(host_of("https://r.example.com:5000/"), "r.example.com:5000");
        assert_eq!(host_of("r.example.com"), "r.example.com");
    }

    #[test]
    fn a_token_is_fresh_until_the_margin_before_it_expires() {
        let now = SystemTime::now();
        let token = token_expiring_at(now + Duration::from_secs(12 * 3600), "p");
        assert!(token.is_fresh_at(now));
        let refresh_at = token.expires_at - TOKEN_REFRESH_MARGIN;
        assert!(token.is_fresh_at(refresh_at - Duration::from_secs(1)));
        assert!(!token.is_fresh_at(refresh_at));
        assert!(!token.is_fresh_at(token.expires_at));
    }

    #[test]
    fn a_token_expiring_within_the_margin_is_never_fresh() {
        let now = SystemTime::now();
        let token = token_expiring_at(now + TOKEN_REFRESH_MARGIN / 2, "p");
        assert!(!token.is_fresh_at(now));
    }

    #[tokio::test]
    async fn a_fresh_token_is_reused_and_a_stale_one_refetched() {
        let cache = TokenCache::default();
        let fetches = AtomicUsize::new(0);
        let now = SystemTime::now();
        let expires_at = now + Duration::from_secs(12 * 3600);
        let fetch = |password: &'static str| {
            let fetches = &fetches;
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                Ok(token_expiring_at(expires_at, password))
            }
        };

        let first = cache.get_or_fetch(now, fetch("one")).await.unwrap();
        let again = cache.get_or_fetch(now, fetch("two")).await.unwrap();
        assert_eq!(
            (first.password.as_str(), again.password.as_str()),
            ("one", "one")
        );
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        let later = expires_at - TOKEN_REFRESH_MARGIN;
        let renewed = cache.get_or_fetch(later, fetch("three")).await.unwrap();
        assert_eq!(renewed.password, "three");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..8)
            .map(|_| {
                let (cache, fetches) = (cache.clone(), fetches.clone());
                tokio::spawn(async move {
                    let now = SystemTime::now();
                    cache
                        .get_or_fetch(now, || async move {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok(token_expiring_at(now + Duration::from_secs(3600), "shared"))
                        })
                        .await
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap().unwrap().password, "shared");
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_fetch_is_retried_by_the_next_caller() {
        let cache = TokenCache::default();
        let now = SystemTime::now();
        let failed = cache
            .get_or_fetch(now, || async {
                Err(RegistryError::IncompleteAuthorization { missing: "a token" })
            })
            .await;
        assert!(failed.is_err());
        let fetched = cache
            .get_or_fetch(now, || async {
                Ok(token_expiring_at(now + Duration::from_secs(3600), "p"))
            })
            .await
            .unwrap();
        assert_eq!(fetched.password, "p");
    }
}
