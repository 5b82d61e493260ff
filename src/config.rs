//! One typed `Settings` for a node: the TOML file, then `SLIPWAY_*` environment variables, then
//! command-line flags, validated once at start so a bad file never half-starts a node.
//!
//! ```toml
//! listen = "127.0.0.1:7878"
//! data_dir = "./slipway-data"
//! max_concurrent_builds = 2
//! [registry]
//! url = "localhost:5000"
//! [lease]
//! duration = "30s"
//! ```
//! Nested keys come from the environment with `__` between levels: `SLIPWAY_LEASE__DURATION=10s`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Where the systemd unit and operators keep the config; used when it exists and no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/slipway/slipway.toml";
/// Loopback by default: a node without tokens must not be reachable from the network.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";
/// Relative to where `slipway serve` starts, so a newcomer's first run keeps everything in one place.
pub const DEFAULT_DATA_DIR: &str = "./slipway-data";
/// Two builds at once keep a 2-core host responsive while still overlapping I/O and CPU.
pub const DEFAULT_MAX_CONCURRENT_BUILDS: usize = 2;
/// Long enough for real-world builds, short enough that a hung build frees its slot the same day.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// How long a stopping node lets running builds finish before requeueing them.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// A lease covers three renewals (every lease/3), so one slow renewal never loses a build.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(30);
/// Clock skew allowance before an expired lease is reaped.
pub const DEFAULT_LEASE_GRACE: Duration = Duration::from_secs(5);
/// Polling only catches what wake-ups miss, so once a second is plenty.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// A build that lost its agent this many times is failed rather than retried forever.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// How long other nodes leave a rebuild to the node that holds its layers.
pub const DEFAULT_AFFINITY_WAIT: Duration = Duration::from_secs(2);
/// Larger uploads than this are refused with 413 before they fill the disk.
pub const DEFAULT_MAX_SOURCE_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Unpacked context bound: stops gzip bombs long before memory or disk suffer.
pub const DEFAULT_MAX_CONTEXT_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// Entry bound: a context with more files than this is almost certainly a mistake (node_modules).
pub const DEFAULT_MAX_ENTRIES: u64 = 200_000;
/// Longest path inside an archive (Linux PATH_MAX).
pub const DEFAULT_MAX_PATH_LEN: usize = 4096;
/// Dangling images and build cache above this are pruned after builds.
pub const DEFAULT_KEEP_STORAGE: u64 = 20 * 1000 * 1000 * 1000;

/// A setting that is present but unusable. The message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: cannot be read: {source}")]
    FileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid settings: {0}")]
    Parse(String),
    #[error("setting `{setting}` is invalid: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One node: SQLite, a local source directory, the local Docker daemon.
    Embedded,
    /// A cluster sharing DynamoDB, S3 and ECR.
    Aws,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub backend: Backend,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Names this node in build records and logs; defaults to the hostname.
    pub node_id: String,
    /// How peers and clients reach this node; defaults to `http://{listen}`.
    pub advertise_url: Option<String>,
    pub max_concurrent_builds: usize,
    #[serde(with = "humantime_serde")]
    pub build_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    pub docker: DockerSettings,
    pub registry: RegistrySettings,
    pub aws: AwsSettings,
    pub lease: LeaseSettings,
    pub limits: Limits,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerSettings {
    pub host: String,
    /// Network of RUN steps: `default`, `none`, `host` or a network name.
    pub network_mode: String,
    pub keep_storage: ByteSize,
    /// Memory limit of each build's RUN containers; unset means no limit.
    pub memory: Option<ByteSize>,
    /// CPU limit of each build's RUN containers in cores (e.g. 1.5); unset means no limit.
    pub cpus: Option<f64>,
}

/// Embedded mode's optional push target.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// `host[:port][/namespace]`; when set, images are tagged there and pushed.
    pub url: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RegistrySettings {
    // Credentials never reach logs, not even through a debug print of the settings.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrySettings")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AwsSettings {
    pub table: String,
    pub bucket: String,
    pub repo_prefix: String,
    pub s3_force_path_style: bool,
    pub registry_endpoint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseSettings {
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub affinity_wait: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_source_bytes: ByteSize,
    pub max_context_bytes: ByteSize,
    pub max_entries: u64,
    pub max_path_len: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            backend: Backend::Embedded,
            listen: DEFAULT_LISTEN
                .parse()
                .expect("default listen address parses"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            node_id: default_node_id(),
            advertise_url: None,
            max_concurrent_builds: DEFAULT_MAX_CONCURRENT_BUILDS,
            build_timeout: DEFAULT_BUILD_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            docker: DockerSettings::default(),
            registry: RegistrySettings::default(),
            aws: AwsSettings::default(),
            lease: LeaseSettings::default(),
            limits: Limits::default(),
        }
    }
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            host: "unix:///var/run/docker.sock".to_string(),
            network_mode: "default".to_string(),
            keep_storage: ByteSize::b(DEFAULT_KEEP_STORAGE),
            memory: None,
            cpus: None,
        }
    }
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            duration: DEFAULT_LEASE_DURATION,
            grace: DEFAULT_LEASE_GRACE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            affinity_wait: DEFAULT_AFFINITY_WAIT,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_source_bytes: ByteSize::b(DEFAULT_MAX_SOURCE_BYTES),
            max_context_bytes: ByteSize::b(DEFAULT_MAX_CONTEXT_BYTES),
            max_entries: DEFAULT_MAX_ENTRIES,
            max_path_len: DEFAULT_MAX_PATH_LEN,
        }
    }
}

/// Command-line overrides: the last word over file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// Environment variables that start with `SLIPWAY_` but belong to the CLI or the tests, not a node.
const NON_SETTING_ENV: &[&str] = &["server", "token", "ca_file", "config"];

impl Settings {
    /// Loads settings: `config` if given (it must exist), else the default path if it exists,
    /// then `SLIPWAY_*` variables, then the flags; validates the result.
    pub fn load(config: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        let file = match config {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::FileRead {
                path: path.clone(),
                source,
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        figment = figment.merge(Env::prefixed("SLIPWAY_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            !NON_SETTING_ENV.contains(&key.as_str()) && !key.starts_with("test_")
        }));
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        if let Some(listen) = overrides.listen {
            settings.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            settings.data_dir = dir.clone();
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                setting,
                reason: reason.to_string(),
            })
        };
        if self.backend == Backend::Aws {
            return invalid(
                "backend",
                "\"aws\" (cluster mode) is not available in this build yet; use \"embedded\"",
            );
        }
        if self.node_id.is_empty() || self.node_id.len() > 128 {
            return invalid("node_id", "must be 1-128 characters");
        }
        if self.max_concurrent_builds == 0 || self.max_concurrent_builds > 256 {
            return invalid("max_concurrent_builds", "must be between 1 and 256");
        }
        if self.build_timeout.is_zero() {
            return invalid("build_timeout", "must be greater than zero");
        }
        if self.lease.duration < Duration::from_secs(1) {
            return invalid("lease.duration", "must be at least 1s");
        }
        if self.lease.poll_interval.is_zero() {
            return invalid("lease.poll_interval", "must be greater than zero");
        }
        if self.lease.max_attempts == 0 {
            return invalid("lease.max_attempts", "must be at least 1");
        }
        if self.limits.max_source_bytes.as_u64() == 0 {
            return invalid("limits.max_source_bytes", "must be greater than zero");
        }
        if self.limits.max_context_bytes.as_u64() == 0 {
            return invalid("limits.max_context_bytes", "must be greater than zero");
        }
        if self.limits.max_entries == 0 {
            return invalid("limits.max_entries", "must be greater than zero");
        }
        if self.docker.network_mode.is_empty() {
            return invalid("docker.network_mode", "must not be empty");
        }
        if let Some(cpus) = self.docker.cpus
            && !(cpus > 0.0 && cpus <= 1024.0)
        {
            return invalid("docker.cpus", "must be a positive number of cores");
        }
        if let Some(url) = &self.registry.url {
            if url.is_empty() || url.contains("://") || url.ends_with('/') {
                return invalid(
                    "registry.url",
                    "must be host[:port][/namespace] without a scheme or trailing slash",
                );
            }
            if self.registry.password.is_some() && self.registry.username.is_none() {
                return invalid("registry.username", "is required when a password is set");
            }
        }
        Ok(())
    }

    /// The URL peers and clients use for this node.
    pub fn advertised_url(&self) -> String {
        self.advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }
}

fn default_node_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "slipway-node".to_string())
}

/// Durations as humantime strings (`"30s"`, `"10m"`) in TOML and the environment.
mod humantime_serde {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\": {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `text` as the config file with `env` added to the environment (which is
    /// process-wide: figment's Jail serialises the tests that touch it and restores it after).
    #[allow(clippy::result_large_err)] // figment::Error is what Jail closures return
    fn load_with_env(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            for (key, value) in env {
                jail.set_env(key, value);
            }
            jail.create_file("slipway.toml", text)?;
            result = Some(Settings::load(
                Some(Path::new("slipway.toml")),
                &Overrides::default(),
            ));
            Ok(())
        });
        result.expect("jail ran")
    }

    fn load_toml(text: &str) -> Result<Settings, ConfigError> {
        load_with_env(text, &[])
    }

    #[test]
    fn environment_variables_override_the_file_and_cli_variables_are_ignored() {
        let s = load_with_env(
            "max_concurrent_builds = 4\n",
            &[
                ("SLIPWAY_MAX_CONCURRENT_BUILDS", "3"),
                ("SLIPWAY_LEASE__DURATION", "9s"),
                ("SLIPWAY_TEST_BASE_IMAGE", "not a setting"),
                ("SLIPWAY_SERVER", "http://not-a-setting"),
                ("SLIPWAY_TOKEN", "not-a-setting"),
            ],
        )
        .unwrap();
        assert_eq!(s.max_concurrent_builds, 3);
        assert_eq!(s.lease.duration, Duration::from_secs(9));
    }

    #[test]
    fn an_unknown_environment_setting_is_refused_by_name() {
        let err = load_with_env("", &[("SLIPWAY_MAX_BUILDS", "3")]).unwrap_err();
        assert!(err.to_string().contains("max_builds"), "{err}");
    }

    #[test]
    fn defaults_are_the_embedded_mode() {
        let s = load_toml("").unwrap();
        assert_eq!(s.backend, Backend::Embedded);
        assert_eq!(s.listen.to_string(), "127.0.0.1:7878");
        assert_eq!(s.data_dir, PathBuf::from("./slipway-data"));
        assert_eq!(s.max_concurrent_builds, 2);
        assert_eq!(s.lease.duration, Duration::from_secs(30));
    }

    #[test]
    fn file_values_override_defaults() {
        let s = load_toml(
            "max_concurrent_builds = 4\nbuild_timeout = \"5m\"\n[lease]\nduration = \"10s\"\n\
             [limits]\nmax_source_bytes = \"1MiB\"\n[registry]\nurl = \"127.0.0.1:5000\"\n",
        )
        .unwrap();
        assert_eq!(s.max_concurrent_builds, 4);
        assert_eq!(s.build_timeout, Duration::from_secs(300));
        assert_eq!(s.lease.duration, Duration::from_secs(10));
        assert_eq!(s.limits.max_source_bytes.as_u64(), 1024 * 1024);
        assert_eq!(s.registry.url.as_deref(), Some("127.0.0.1:5000"));
    }

    #[test]
    fn unknown_settings_are_refused_by_name() {
        let err = load_toml("max_concurent_builds = 4\n").unwrap_err();
        assert!(err.to_string().contains("max_concurent_builds"), "{err}");
    }

    #[test]
    fn a_bad_duration_names_the_setting() {
        let err = load_toml("[lease]\nduration = \"soon\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("duration") && text.contains("soon"), "{text}");
    }

    #[test]
    fn zero_concurrent_builds_is_invalid() {
        let err = load_toml("max_concurrent_builds = 0\n").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    setting: "max_concurrent_builds",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err = Settings::load(
            Some(Path::new("/nonexistent/slipway.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::FileRead { .. }));
    }

    #[test]
    fn registry_passwords_are_not_printed() {
        let r = RegistrySettings {
            url: Some("r".into()),
            username: Some("AWS".into()),
            password: Some("hunter2".into()),
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
