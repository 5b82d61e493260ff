//! Helpers shared by the integration tests (each test file says `mod common;`).
//! They run against the real services `scripts/testbed` starts; a missing service fails the test.
#![allow(dead_code)]

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where `scripts/testbed` writes the env it prints.
const TESTBED_ENV_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/testbed.env");

/// How the tests reach the real services `scripts/testbed` started.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// A local image Dockerfiles can start `FROM` (nothing can be pulled here).
    pub base_image: String,
    /// `host:port` of the registry standing in for ECR.
    pub registry: String,
    pub registry_user: String,
    pub registry_password: String,
    /// `http://host:port` of moto_server, standing in for S3, DynamoDB, ECR and ECS.
    pub aws_endpoint: String,
}

/// The testbed, checked once per test binary: docker answers, the base image exists and the
/// registry asks for credentials. Panics, naming `scripts/test`, when anything is missing —
/// tests never skip silently.
pub fn testbed() -> Testbed {
    static TESTBED: OnceLock<Result<Testbed, String>> = OnceLock::new();
    match TESTBED.get_or_init(check_testbed) {
        Ok(testbed) => testbed.clone(),
        Err(problem) => panic!(
            "integration tests need the testbed: {problem}.\n\
             Run them with `scripts/test` (or run `scripts/testbed` once, then `cargo test`)."
        ),
    }
}

fn check_testbed() -> Result<Testbed, String> {
    let file = read_env_file(Path::new(TESTBED_ENV_FILE));
    let var = |key: &str| {
        std::env::var(key)
            .ok()
            .or_else(|| file.get(key).cloned())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("{key} is not set and not in {TESTBED_ENV_FILE}"))
    };
    let testbed = Testbed {
        base_image: var("SLIPWAY_TEST_BASE_IMAGE")?,
        registry: var("SLIPWAY_TEST_REGISTRY")?,
        registry_user: var("SLIPWAY_TEST_REGISTRY_USER")?,
        registry_password: var("SLIPWAY_TEST_REGISTRY_PASSWORD")?,
        aws_endpoint: var("SLIPWAY_TEST_AWS_ENDPOINT")?,
    };
    check_docker(&testbed.base_image)?;
    check_registry(&testbed.registry)?;
    check_aws_endpoint(&testbed.aws_endpoint)?;
    Ok(testbed)
}

fn read_env_file(path: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return HashMap::new();
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn check_docker(base_image: &str) -> Result<(), String> {
    let info = Command::new("docker")
        .arg("info")
        .output()
        .map_err(|err| format!("cannot run `docker info`: {err}"))?;
    if !info.status.success() {
        return Err(format!(
            "`docker info` failed: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    let inspect = docker(&["image", "inspect", "--format", "{{.Id}}", base_image]);
    if !inspect.status.success() {
        return Err(format!(
            "base image {base_image} is missing from the docker daemon"
        ));
    }
    Ok(())
}

/// moto_server answers any GET; an HTTP status line of any kind proves it is up.
fn check_aws_endpoint(endpoint: &str) -> Result<(), String> {
    let authority = endpoint
        .strip_prefix("http://")
        .ok_or_else(|| format!("AWS endpoint {endpoint} is not an http:// URL"))?
        .trim_end_matches('/');
    let status_line = http_get_status_line(authority, "/")
        .map_err(|err| format!("AWS endpoint {endpoint} unreachable: {err}"))?;
    if !status_line.starts_with("HTTP/") {
        return Err(format!(
            "AWS endpoint {endpoint} answered `{status_line}` to GET /, not HTTP"
        ));
    }
    Ok(())
}

/// The first line of the answer to a plain HTTP/1.0 `GET path` on `authority` (`host:port`).
fn http_get_status_line(authority: &str, path: &str) -> Result<String, String> {
    let fail = |err: &dyn std::fmt::Display| err.to_string();
    let addr = authority
        .to_socket_addrs()
        .map_err(|err| fail(&err))?
        .next()
        .ok_or_else(|| fail(&"no address"))?;
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|err| fail(&err))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|err| fail(&err))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").map_err(|err| fail(&err))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|err| fail(&err))?;
    let response = String::from_utf8_lossy(&response);
    Ok(response.lines().next().unwrap_or_default().to_owned())
}

/// The registry answers `GET /v2/` with 401 when it is up and wants basic auth.
fn check_registry(registry: &str) -> Result<(), String> {
    let status_line = http_get_status_line(registry, "/v2/")
        .map_err(|err| format!("registry {registry} unreachable: {err}"))?;
    if status_line.split_whitespace().nth(1) != Some("401") {
        return Err(format!(
            "registry {registry} answered `{status_line}` to GET /v2/ instead of 401"
        ));
    }
    Ok(())
}

/// A name no other test (or earlier run) uses, valid as an app name
/// (`^[a-z0-9]+([._-][a-z0-9]+)*$`, at most 63 chars): prefix, pid, counter, random suffix.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    const MAX_LEN: usize = 63;

    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u64(count);
    let suffix = format!("{}-{count}-{}", std::process::id(), base36(hasher.finish()));

    let lowered = prefix.to_ascii_lowercase();
    let mut parts: Vec<&str> = lowered
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .collect();
    if parts.is_empty() {
        parts.push("t");
    }
    let mut prefix = parts.join("-");
    prefix.truncate(MAX_LEN.saturating_sub(suffix.len() + 1));
    let prefix = prefix.trim_end_matches('-');
    if prefix.is_empty() {
        suffix
    } else {
        format!("{prefix}-{suffix}")
    }
}

/// Six base-36 digits of `n`.
fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    (0..6)
        .map(|_| {
            let digit = DIGITS[(n % 36) as usize] as char;
            n /= 36;
            digit
        })
        .collect()
}

/// A gzipped tar, in memory, of regular files (mode 0o644) from `(path, content)` pairs.
pub fn tgz(files: &[(&str, &str)]) -> Vec<u8> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut archive = tar::Builder::new(encoder);
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        // Fixed so the same files give the same bytes.
        header.set_mtime(1_700_000_000);
        archive
            .append_data(&mut header, path, content.as_bytes())
            .unwrap_or_else(|err| panic!("adding {path} to tgz: {err}"));
    }
    archive
        .into_inner()
        .and_then(|encoder| encoder.finish())
        .expect("finishing tgz")
}

/// Writes `(path, content)` pairs under `dir`, creating parent directories.
pub fn dockerfile_app(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|err| panic!("creating {}: {err}", parent.display()));
        }
        std::fs::write(&target, content)
            .unwrap_or_else(|err| panic!("writing {}: {err}", target.display()));
    }
}

/// Runs the docker CLI (honouring `DOCKER_HOST`) and returns what it did; callers check status.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("running docker {}: {err}", args.join(" ")))
}

pub mod node;

/// An AWS SDK config pointing at the testbed's moto_server (any credentials, us-east-1).
pub async fn moto_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(testbed().aws_endpoint)
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test", "test", None, None, "static",
        ))
        .load()
        .await
}
