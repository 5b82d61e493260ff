//! Domain types shared by the API, the stores and the agent. Every value that comes from a user
//! is validated here, once, so the rest of the code can trust it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest app name: a DNS label, so it works as a repository name and a hostname part.
pub const MAX_APP_NAME_LEN: usize = 63;
/// Build args are passed to dockerd on every build; a few dozen is plenty for real Dockerfiles.
pub const MAX_BUILD_ARGS: usize = 64;
/// Longest build-arg name; Docker itself has no limit, ours keeps rows small.
pub const MAX_BUILD_ARG_NAME_LEN: usize = 128;
/// Longest build-arg value (4 KiB): enough for tokens and URLs, small enough for a DynamoDB row.
pub const MAX_BUILD_ARG_VALUE_LEN: usize = 4096;
/// Longest Dockerfile path inside the context.
pub const MAX_DOCKERFILE_PATH_LEN: usize = 255;
/// Longest `--target` stage name.
pub const MAX_TARGET_LEN: usize = 128;
/// Longest free-text description.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

/// A user-supplied value that does not pass validation. The message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// `app` was not given.
    #[error("the `app` parameter is required")]
    AppMissing,
    #[error(
        "app name {0:?} is invalid: use 1-63 lowercase letters, digits and single `.`, `_` or `-` between them"
    )]
    AppInvalid(String),
    #[error("build id {0:?} is not a valid ULID")]
    IdInvalid(String),
    #[error("status {0:?} is not one of queued, running, succeeded, failed, cancelled")]
    StatusInvalid(String),
    #[error("dockerfile path {0:?} is invalid: it must be a relative path inside the context")]
    DockerfileInvalid(String),
    #[error("target {0:?} is invalid: use letters, digits, `.`, `_` and `-`")]
    TargetInvalid(String),
    #[error("build arg {0:?} is invalid: use NAME=VALUE with a name of letters, digits and `_`")]
    BuildArgInvalid(String),
    #[error("too many build args: at most {MAX_BUILD_ARGS}")]
    TooManyBuildArgs,
    #[error("description is longer than {MAX_DESCRIPTION_LEN} bytes")]
    DescriptionTooLong,
    #[error("{name} {value:?} is invalid: {reason}")]
    Parameter {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("unknown parameter {0:?}")]
    UnknownParameter(String),
}

impl ValidationError {
    /// The stable machine-readable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::AppMissing => "app_missing",
            ValidationError::AppInvalid(_) => "invalid_app",
            ValidationError::IdInvalid(_) => "invalid_id",
            ValidationError::StatusInvalid(_) => "invalid_status",
            ValidationError::DockerfileInvalid(_) => "invalid_dockerfile",
            ValidationError::TargetInvalid(_) => "invalid_target",
            ValidationError::BuildArgInvalid(_) => "invalid_build_arg",
            ValidationError::TooManyBuildArgs => "too_many_build_args",
            ValidationError::DescriptionTooLong => "description_too_long",
            ValidationError::Parameter { .. } => "invalid_parameter",
            ValidationError::UnknownParameter(_) => "unknown_parameter",
        }
    }
}

/// A build's identity: a ULID, so ids sort by creation time and pages can use them as cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BuildId(ulid::Ulid);

impl BuildId {
    /// A new id, greater than every id this process made before — also within one millisecond,
    /// so the queue is first-come first-served and listings are newest first.
    pub fn new() -> Self {
        static GENERATOR: std::sync::Mutex<ulid::Generator> =
            std::sync::Mutex::new(ulid::Generator::new());
        let mut generator = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
        // Fails only when 2^80 ids were made in one millisecond; a random id is fine then.
        BuildId(generator.generate().unwrap_or_else(|_| ulid::Ulid::new()))
    }
}

impl Default for BuildId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for BuildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for BuildId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Ulid::from_string accepts lowercase; ids are canonical uppercase, so insist on it.
        if s.len() != 26 || s.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(ValidationError::IdInvalid(s.to_string()));
        }
        ulid::Ulid::from_string(s)
            .map(BuildId)
            .map_err(|_| ValidationError::IdInvalid(s.to_string()))
    }
}

impl Serialize for BuildId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BuildId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An app name: `^[a-z0-9]+([._-][a-z0-9]+)*$`, at most 63 bytes. It becomes a repository name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct AppName(String);

impl AppName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AppName {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ValidationError::AppInvalid(s.to_string());
        if s.is_empty() || s.len() > MAX_APP_NAME_LEN {
            return Err(invalid());
        }
        let mut previous_was_separator = true; // forbids a leading separator
        for b in s.bytes() {
            match b {
                b'a'..=b'z' | b'0'..=b'9' => previous_was_separator = false,
                b'.' | b'_' | b'-' if !previous_was_separator => previous_was_separator = true,
                _ => return Err(invalid()),
            }
        }
        if previous_was_separator {
            return Err(invalid()); // trailing separator
        }
        Ok(AppName(s.to_string()))
    }
}

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a build is in its life. `queued → running → succeeded | failed | cancelled`;
/// a running build whose agent is lost goes back to `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// A finished build never changes again.
    pub fn is_finished(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Cancelled)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(Status::Queued),
            "running" => Ok(Status::Running),
            "succeeded" => Ok(Status::Succeeded),
            "failed" => Ok(Status::Failed),
            "cancelled" => Ok(Status::Cancelled),
            _ => Err(ValidationError::StatusInvalid(s.to_string())),
        }
    }
}

/// A point in time as milliseconds since the Unix epoch; serialized as RFC 3339 UTC with
/// milliseconds (`2026-12-04T21:02:55.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(d.as_millis() as i64))
    }

    pub fn minus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(d.as_millis() as i64))
    }

    pub fn to_rfc3339(self) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(self.0 as i128 * 1_000_000)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let format = time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        );
        t.format(&format).unwrap_or_default()
    }

    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let t =
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
        Some(Timestamp((t.unix_timestamp_nanos() / 1_000_000) as i64))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid timestamp {s:?}")))
    }
}

/// How to build: the knobs of `docker build` a user may set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOptions {
    pub dockerfile: String,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub no_cache: bool,
}

/// The Dockerfile name docker uses when none is given.
pub const DEFAULT_DOCKERFILE: &str = "Dockerfile";

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            dockerfile: DEFAULT_DOCKERFILE.to_string(),
            target: None,
            build_args: BTreeMap::new(),
            no_cache: false,
        }
    }
}

impl BuildOptions {
    /// Sets the Dockerfile path, normalised (`./a/Dockerfile` → `a/Dockerfile`).
    pub fn set_dockerfile(&mut self, path: &str) -> Result<(), ValidationError> {
        let invalid = || ValidationError::DockerfileInvalid(path.to_string());
        if path.is_empty() || path.len() > MAX_DOCKERFILE_PATH_LEN || path.starts_with('/') {
            return Err(invalid());
        }
        let mut parts = Vec::new();
        for part in path.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(invalid()),
                p if p.chars().any(char::is_control) => return Err(invalid()),
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return Err(invalid());
        }
        self.dockerfile = parts.join("/");
        Ok(())
    }

    pub fn set_target(&mut self, target: &str) -> Result<(), ValidationError> {
        let valid = !target.is_empty()
            && target.len() <= MAX_TARGET_LEN
            && target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(ValidationError::TargetInvalid(target.to_string()));
        }
        self.target = Some(target.to_string());
        Ok(())
    }

    /// Adds one `NAME=VALUE` build arg; a repeated name keeps the last value, as docker does.
    pub fn add_build_arg(&mut self, pair: &str) -> Result<(), ValidationError> {
        let invalid = || ValidationError::BuildArgInvalid(pair.chars().take(200).collect());
        let (name, value) = pair.split_once('=').ok_or_else(invalid)?;
        let name_ok = !name.is_empty()
            && name.len() <= MAX_BUILD_ARG_NAME_LEN
            && !name.as_bytes()[0].is_ascii_digit()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok || value.len() > MAX_BUILD_ARG_VALUE_LEN || value.contains('\0') {
            return Err(invalid());
        }
        if !self.build_args.contains_key(name) && self.build_args.len() >= MAX_BUILD_ARGS {
            return Err(ValidationError::TooManyBuildArgs);
        }
        self.build_args.insert(name.to_string(), value.to_string());
        Ok(())
    }
}

/// Parses the boolean spellings a query string or form uses (`no_cache`, `no_cache=true`, `=1`).
pub fn parse_flag(name: &'static str, value: &str) -> Result<bool, ValidationError> {
    match value {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ValidationError::Parameter {
            name,
            value: value.to_string(),
            reason: "expected true or false",
        }),
    }
}

/// What the server knows about an uploaded source archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub bytes: u64,
    pub sha256: String,
}

/// Everything a client supplies to enqueue a build, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    pub app: AppName,
    pub options: BuildOptions,
    pub description: Option<String>,
}

/// Collects build parameters from query pairs or form fields, in any order, then validates them.
#[derive(Debug, Default)]
pub struct BuildRequestBuilder {
    app: Option<String>,
    options: BuildOptions,
    description: Option<String>,
}

impl BuildRequestBuilder {
    /// Takes one `name=value` parameter. Unknown names are rejected so typos do not go unnoticed.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ValidationError> {
        match name {
            "app" => self.app = Some(value.to_string()),
            "dockerfile" => self.options.set_dockerfile(value)?,
            "target" => self.options.set_target(value)?,
            "build_arg" => self.options.add_build_arg(value)?,
            "no_cache" => self.options.no_cache = parse_flag("no_cache", value)?,
            "description" => {
                if value.len() > MAX_DESCRIPTION_LEN {
                    return Err(ValidationError::DescriptionTooLong);
                }
                self.description = Some(value.to_string()).filter(|d| !d.is_empty());
            }
            other => {
                return Err(ValidationError::UnknownParameter(
                    other.chars().take(100).collect(),
                ));
            }
        }
        Ok(())
    }

    /// The Dockerfile path given so far (the default until one is set).
    pub fn dockerfile(&self) -> &str {
        &self.options.dockerfile
    }

    pub fn finish(self) -> Result<BuildRequest, ValidationError> {
        let app = self.app.ok_or(ValidationError::AppMissing)?.parse()?;
        Ok(BuildRequest {
            app,
            options: self.options,
            description: self.description,
        })
    }
}

/// A build as the API shows it and the stores keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    pub id: BuildId,
    pub app: AppName,
    pub status: Status,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// The node that ran (or runs) the latest attempt.
    pub node: Option<String>,
    /// How many times the build was claimed; the fencing token of the claim protocol.
    pub attempt: u32,
    pub source: SourceInfo,
    pub options: BuildOptions,
    pub description: Option<String>,
    pub image: Option<String>,
    pub digest: Option<String>,
    pub error: Option<String>,
    /// Layer-cache use of the latest attempt: steps taken from cache / steps run.
    #[serde(default)]
    pub cached_steps: Option<u32>,
    #[serde(default)]
    pub total_steps: Option<u32>,
    /// Set by a cancel request while the build runs; its owner stops it at the next renewal.
    #[serde(default)]
    pub cancel_requested: bool,
}

impl Build {
    /// A freshly enqueued build.
    pub fn new_queued(id: BuildId, request: BuildRequest, source: SourceInfo) -> Self {
        Build {
            id,
            app: request.app,
            status: Status::Queued,
            created_at: Timestamp::now(),
            started_at: None,
            finished_at: None,
            node: None,
            attempt: 0,
            source,
            options: request.options,
            description: request.description,
            image: None,
            digest: None,
            error: None,
            cached_steps: None,
            total_steps: None,
            cancel_requested: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_follow_the_repository_name_rules() {
        for ok in ["hello", "a", "my-app", "my.app_2", "0abc", &"a".repeat(63)] {
            assert!(ok.parse::<AppName>().is_ok(), "{ok} should be valid");
        }
        for bad in [
            "",
            "Hello",
            "-a",
            "a-",
            "a--b",
            "a..b",
            "a/b",
            "a b",
            "ä",
            &"a".repeat(64),
        ] {
            assert_eq!(
                bad.parse::<AppName>(),
                Err(ValidationError::AppInvalid(bad.to_string())),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn build_ids_round_trip_and_reject_garbage() {
        let id = BuildId::new();
        assert_eq!(id.to_string().parse::<BuildId>(), Ok(id));
        assert!("nonsense".parse::<BuildId>().is_err());
        assert!(id.to_string().to_lowercase().parse::<BuildId>().is_err());
    }

    #[test]
    fn timestamps_render_rfc3339_with_milliseconds() {
        let t = Timestamp::from_millis(1_764_882_175_123);
        assert_eq!(t.to_rfc3339(), "2025-12-04T21:02:55.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_rfc3339()), Some(t));
    }

    #[test]
    fn dockerfile_paths_are_normalised_and_must_stay_inside() {
        let mut o = BuildOptions::default();
        o.set_dockerfile("./docker/Dockerfile.prod").unwrap();
        assert_eq!(o.dockerfile, "docker/Dockerfile.prod");
        for bad in ["", "/etc/Dockerfile", "../Dockerfile", "a/../../b", "."] {
            assert!(o.set_dockerfile(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn build_args_need_a_name_and_keep_the_last_value() {
        let mut o = BuildOptions::default();
        o.add_build_arg("WORD=one").unwrap();
        o.add_build_arg("WORD=two=three").unwrap();
        o.add_build_arg("EMPTY=").unwrap();
        assert_eq!(o.build_args["WORD"], "two=three");
        assert_eq!(o.build_args["EMPTY"], "");
        for bad in ["NOEQUALS", "=x", "1A=x", "A-B=x"] {
            assert!(matches!(
                o.add_build_arg(bad),
                Err(ValidationError::BuildArgInvalid(_))
            ));
        }
    }

    #[test]
    fn too_many_build_args_are_refused() {
        let mut o = BuildOptions::default();
        for i in 0..MAX_BUILD_ARGS {
            o.add_build_arg(&format!("A{i}=x")).unwrap();
        }
        assert_eq!(
            o.add_build_arg("ONE_MORE=x"),
            Err(ValidationError::TooManyBuildArgs)
        );
    }

    #[test]
    fn a_request_without_app_is_refused() {
        let b = BuildRequestBuilder::default();
        assert_eq!(b.finish(), Err(ValidationError::AppMissing));
    }

    #[test]
    fn unknown_parameters_are_refused() {
        let mut b = BuildRequestBuilder::default();
        assert_eq!(
            b.set("ap", "x"),
            Err(ValidationError::UnknownParameter("ap".into()))
        );
    }
}
