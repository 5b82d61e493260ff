//! The command line: clap definitions for every subcommand, and the client subcommands (submit,
//! builds, status, logs, cancel) that talk to a server through `client.rs`. main.rs runs `serve`.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{Client, ClientError, ListQuery, SubmitParams};
use crate::context::{ContextError, pack_context};
use crate::model::{
    AppName, Build, BuildId, BuildOptions, DEFAULT_DOCKERFILE, Status, Timestamp, ValidationError,
};

/// Where a local `slipway serve` listens by default.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7878";
/// The bearer token comes from the environment only, so it never shows in `ps` or shell history.
pub const TOKEN_ENV: &str = "SLIPWAY_TOKEN";
/// How many times in a row a broken log stream is reconnected before giving up; a node restarted
/// by systemd is back well within that.
pub const MAX_LOG_RECONNECTS: u32 = 5;
/// Wait before the n-th reconnect is n times this: 1 s, 2 s, … 15 s in all.
pub const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// The server caps a page at 200 builds; asking for more is a usage error, caught here.
pub const MAX_LIST_LIMIT: u32 = 200;

#[derive(Debug, Parser)]
#[command(
    name = "slipway",
    version,
    about = "A build service for AWS ECS clusters in one binary"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service on this node: API, agent and dashboard.
    Serve(ServeArgs),
    /// Pack a directory (honouring .dockerignore), build it on the server and follow the log.
    Submit(SubmitArgs),
    /// List recent builds, newest first.
    Builds(BuildsArgs),
    /// Show one build.
    Status(StatusArgs),
    /// Print a build's log, following it until the build ends.
    Logs(LogsArgs),
    /// Cancel a queued or running build.
    Cancel(CancelArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServeArgs {
    /// Settings file [default: /etc/slipway/slipway.toml].
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on, overriding the settings (e.g. 0.0.0.0:7878).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory for the embedded store, sources and the local cache.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// How a client command reaches the server. The token is read from `SLIPWAY_TOKEN` instead.
#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ConnectArgs {
    /// URL of any slipway node.
    #[arg(long, env = "SLIPWAY_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,
    /// PEM file with the CA that signed the server's TLS certificate.
    #[arg(long, env = "SLIPWAY_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

impl ConnectArgs {
    pub fn client(&self, token: Option<String>) -> Result<Client, ClientError> {
        Client::new(&self.server, token, self.ca_file.as_deref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct SubmitArgs {
    /// The build context.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The app the image belongs to; it names the repository.
    #[arg(long, value_parser = parse_app)]
    pub app: String,
    /// Dockerfile path inside DIR [default: Dockerfile].
    #[arg(long, value_name = "PATH", value_parser = parse_dockerfile)]
    pub dockerfile: Option<String>,
    /// Build stage to stop at.
    #[arg(long, value_parser = parse_target)]
    pub target: Option<String>,
    /// A build arg, NAME=VALUE; repeatable.
    #[arg(long = "build-arg", value_name = "K=V", value_parser = parse_build_arg)]
    pub build_args: Vec<String>,
    /// Build every step afresh, without the layer cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Free text shown with the build.
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Print the build id and return without following the build.
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

impl SubmitArgs {
    fn params(&self) -> SubmitParams {
        SubmitParams {
            app: self.app.clone(),
            dockerfile: self.dockerfile.clone(),
            target: self.target.clone(),
            build_args: self.build_args.clone(),
            no_cache: self.no_cache,
            description: self.description.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct BuildsArgs {
    /// Only builds of this app.
    #[arg(long, value_parser = parse_app)]
    pub app: Option<String>,
    /// Only builds in this state: queued, running, succeeded, failed, cancelled.
    #[arg(long, value_parser = parse_status)]
    pub status: Option<String>,
    /// At most this many builds [server default: 20].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_LIST_LIMIT)))]
    pub limit: Option<u32>,
    /// Builds older than this one (the cursor printed after a full page).
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub before: Option<String>,
    /// Print the page as the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct StatusArgs {
    #[arg(value_parser = parse_id)]
    pub id: String,
    /// Print the build as the API's JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct LogsArgs {
    #[arg(value_parser = parse_id)]
    pub id: String,
    /// Print the log so far and return instead of following it.
    #[arg(long)]
    pub no_follow: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct CancelArgs {
    #[arg(value_parser = parse_id)]
    pub id: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

// Value parsers: the model's validation, run before anything is packed or sent, so a typo is a
// usage error (exit 2) with the same message the server would give.

fn parse_app(value: &str) -> Result<String, ValidationError> {
    value.parse::<AppName>().map(|app| app.to_string())
}

fn parse_id(value: &str) -> Result<String, ValidationError> {
    value.parse::<BuildId>().map(|id| id.to_string())
}

fn parse_status(value: &str) -> Result<String, ValidationError> {
    value.parse::<Status>().map(|status| status.to_string())
}

/// Returns the normalised path (`./a/Dockerfile` → `a/Dockerfile`).
fn parse_dockerfile(value: &str) -> Result<String, ValidationError> {
    let mut options = BuildOptions::default();
    options.set_dockerfile(value)?;
    Ok(options.dockerfile)
}

fn parse_target(value: &str) -> Result<String, ValidationError> {
    BuildOptions::default().set_target(value)?;
    Ok(value.to_string())
}

fn parse_build_arg(value: &str) -> Result<String, ValidationError> {
    BuildOptions::default().add_build_arg(value)?;
    Ok(value.to_string())
}

/// Why a client command failed; printed as one line after `slipway: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// `serve` reached the client dispatcher; main.rs runs it.
    #[error("`serve` is not a client command")]
    NotAClientCommand,
    #[error("build context {} is not a directory", dir.display())]
    ContextNotADirectory { dir: PathBuf },
    #[error("no Dockerfile at {}; pass --dockerfile", path.display())]
    DockerfileMissing { path: PathBuf },
    #[error("cannot write the build context to a temporary file: {0}")]
    ArchiveWrite(#[source] std::io::Error),
    #[error("cannot pack the build context: {0}")]
    Pack(#[source] ContextError),
    /// The blocking packing task panicked or was cancelled.
    #[error("packing the build context stopped: {0}")]
    PackTask(#[source] tokio::task::JoinError),
    /// The log stream kept ending cleanly while the build was still going.
    #[error("the log of build {id} ended before the build did; see `slipway status {id}`")]
    LogEndedEarly { id: String },
    #[error("cannot write to stdout: {0}")]
    Stdout(#[source] std::io::Error),
    #[error("cannot encode JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// Runs a client command; returns the process exit code. (Serve is handled by main.rs, not here.)
pub async fn run_client_command(command: Command) -> ExitCode {
    let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
    let has_token = token.is_some();
    let result = match command {
        Command::Serve(_) => Err(CliError::NotAClientCommand),
        Command::Submit(args) => submit(args, token).await,
        Command::Builds(args) => list_builds(args, token).await,
        Command::Status(args) => show_status(args, token).await,
        Command::Logs(args) => print_logs(args, token).await,
        Command::Cancel(args) => cancel(args, token).await,
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("slipway: {}", error_line(&error, has_token));
            ExitCode::FAILURE
        }
    }
}

/// The error message, with a hint when the server wants a token that was not given.
fn error_line(error: &CliError, has_token: bool) -> String {
    match error {
        CliError::Client(ClientError::Server { status: 401, .. }) if !has_token => {
            format!("{error}; set {TOKEN_ENV}")
        }
        _ => error.to_string(),
    }
}

async fn submit(args: SubmitArgs, token: Option<String>) -> Result<ExitCode, CliError> {
    let client = args.connect.client(token)?;
    let dockerfile = args.dockerfile.as_deref().unwrap_or(DEFAULT_DOCKERFILE);
    check_context(&args.dir, dockerfile)?;
    let archive = pack_to_temp_file(args.dir.clone(), dockerfile.to_string()).await?;
    let build = client.submit(archive.path(), &args.params()).await?;
    drop(archive);
    let id = build.id.to_string();
    eprintln!("build {id} queued ({} bytes)", build.source.bytes);
    let mut stdout = std::io::stdout();
    if args.detach {
        writeln!(stdout, "{id}").map_err(CliError::Stdout)?;
        return Ok(ExitCode::SUCCESS);
    }
    let build = follow_until_finished(&client, &id, &mut stdout).await?;
    match outcome(&build) {
        Ok(image) => {
            if let Some(image) = image {
                writeln!(stdout, "{image}").map_err(CliError::Stdout)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            eprintln!("{why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Catches the two mistakes that would otherwise cost an upload: a wrong DIR, a missing Dockerfile.
fn check_context(dir: &Path, dockerfile: &str) -> Result<(), CliError> {
    if !dir.is_dir() {
        return Err(CliError::ContextNotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    let path = dir.join(dockerfile);
    if !path.is_file() {
        return Err(CliError::DockerfileMissing { path });
    }
    Ok(())
}

/// Packs DIR into a temporary .tgz (deleted when dropped); the tar and gzip work is blocking.
async fn pack_to_temp_file(
    dir: PathBuf,
    dockerfile: String,
) -> Result<tempfile::NamedTempFile, CliError> {
    let task = tokio::task::spawn_blocking(move || {
        let mut archive = tempfile::Builder::new()
            .prefix("slipway-context-")
            .suffix(".tgz")
            .tempfile()
            .map_err(CliError::ArchiveWrite)?;
        let mut out = BufWriter::new(archive.as_file_mut());
        pack_context(&dir, &dockerfile, &mut out).map_err(CliError::Pack)?;
        out.flush().map_err(CliError::ArchiveWrite)?;
        drop(out);
        Ok(archive)
    });
    task.await.map_err(CliError::PackTask)?
}

/// How `submit` ends: the image reference to print last, or the line saying why there is none.
fn outcome(build: &Build) -> Result<Option<&str>, String> {
    let id = build.id;
    let reason = build.error.as_deref();
    match build.status {
        Status::Succeeded => Ok(build.image.as_deref()),
        Status::Failed => Err(format!(
            "build {id} failed: {}",
            reason.unwrap_or("no error recorded")
        )),
        Status::Cancelled => Err(match reason {
            Some(reason) => format!("build {id} cancelled: {reason}"),
            None => format!("build {id} cancelled"),
        }),
        Status::Queued | Status::Running => Err(format!("build {id} is still {}", build.status)),
    }
}

/// Prints a build's log to `out` until the build ends and returns the finished build. When the
/// stream breaks (a node restarting) it reconnects; the log endpoint replays from the first line,
/// so the lines already printed are skipped.
async fn follow_until_finished(
    client: &Client,
    id: &str,
    out: &mut dyn Write,
) -> Result<Build, CliError> {
    let mut printed = 0usize;
    let mut failures = 0u32;
    loop {
        let printed_before = printed;
        let mut seen = 0usize;
        let mut write_error = None;
        let streamed = client
            .follow_logs(id, true, &mut |line| {
                seen += 1;
                if seen > printed && write_error.is_none() {
                    match writeln!(out, "{line}") {
                        Ok(()) => printed += 1,
                        Err(error) => write_error = Some(error),
                    }
                }
            })
            .await;
        if let Some(error) = write_error {
            return Err(CliError::Stdout(error));
        }
        let last_error = match streamed {
            Ok(()) => match client.build(id).await {
                Ok(build) if build.status.is_finished() => return Ok(build),
                Ok(_) => CliError::LogEndedEarly { id: id.to_string() },
                Err(error) if error.is_transient() => error.into(),
                Err(error) => return Err(error.into()),
            },
            Err(error) if error.is_transient() => error.into(),
            Err(error) => return Err(error.into()),
        };
        if printed > printed_before {
            failures = 0;
        }
        failures += 1;
        if failures > MAX_LOG_RECONNECTS {
            return Err(last_error);
        }
        eprintln!("slipway: log of build {id} interrupted ({last_error}); reconnecting");
        tokio::time::sleep(RECONNECT_BACKOFF * failures).await;
    }
}

async fn list_builds(args: BuildsArgs, token: Option<String>) -> Result<ExitCode, CliError> {
    let client = args.connect.client(token)?;
    let query = ListQuery {
        app: args.app,
        status: args.status,
        limit: args.limit,
        before: args.before,
    };
    let page = client.builds(&query).await?;
    let text = if args.json {
        to_json(&page)?
    } else {
        build_table(&page.builds)
    };
    print!("{text}");
    std::io::stdout().flush().map_err(CliError::Stdout)?;
    if let (Some(next), false) = (&page.next, args.json) {
        eprintln!("more: slipway builds --before {next}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn show_status(args: StatusArgs, token: Option<String>) -> Result<ExitCode, CliError> {
    let client = args.connect.client(token)?;
    let build = client.build(&args.id).await?;
    let text = if args.json {
        to_json(&build)?
    } else {
        status_summary(&build)
    };
    print!("{text}");
    std::io::stdout().flush().map_err(CliError::Stdout)?;
    Ok(ExitCode::SUCCESS)
}

async fn print_logs(args: LogsArgs, token: Option<String>) -> Result<ExitCode, CliError> {
    let client = args.connect.client(token)?;
    let mut stdout = std::io::stdout();
    if !args.no_follow {
        follow_until_finished(&client, &args.id, &mut stdout).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut write_error = None;
    client
        .follow_logs(&args.id, false, &mut |line| {
            if write_error.is_none() {
                write_error = writeln!(stdout, "{line}").err();
            }
        })
        .await?;
    match write_error {
        Some(error) => Err(CliError::Stdout(error)),
        None => Ok(ExitCode::SUCCESS),
    }
}

async fn cancel(args: CancelArgs, token: Option<String>) -> Result<ExitCode, CliError> {
    let client = args.connect.client(token)?;
    let build = client.cancel(&args.id).await?;
    println!("{}", cancel_summary(&build));
    Ok(ExitCode::SUCCESS)
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    let mut text = serde_json::to_string_pretty(value).map_err(CliError::Json)?;
    text.push('\n');
    Ok(text)
}

/// What `cancel` prints: a running build stops only when its owner notices the request.
fn cancel_summary(build: &Build) -> String {
    let id = build.id;
    match build.status {
        Status::Running | Status::Queued if build.cancel_requested => {
            format!("build {id} {}, cancel requested", build.status)
        }
        status => format!("build {id} {status}"),
    }
}

/// The `builds` table: aligned columns, two spaces apart, `-` where a value is missing.
pub fn build_table(builds: &[Build]) -> String {
    let header = ["ID", "APP", "STATUS", "CREATED", "DURATION", "IMAGE"].map(String::from);
    let rows: Vec<[String; 6]> = builds
        .iter()
        .map(|build| {
            [
                build.id.to_string(),
                build.app.to_string(),
                build.status.to_string(),
                format_time(build.created_at),
                run_time(build).map_or_else(|| "-".to_string(), format_duration),
                build.image.clone().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|cell| cell.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut table = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            line.push_str(&format!("{cell:<width$}  "));
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    table
}

/// The `status` summary: one `label  value` line per field that has a value.
pub fn status_summary(build: &Build) -> String {
    let mut fields: Vec<(&str, String)> = vec![
        ("build", build.id.to_string()),
        ("app", build.app.to_string()),
        ("status", build.status.to_string()),
    ];
    if build.cancel_requested && !build.status.is_finished() {
        fields.push(("cancel", "requested".to_string()));
    }
    if let Some(description) = &build.description {
        fields.push(("description", description.clone()));
    }
    if let Some(node) = &build.node {
        fields.push(("node", node.clone()));
    }
    fields.push(("attempt", build.attempt.to_string()));
    fields.push(("created", format_time(build.created_at)));
    if let Some(started) = build.started_at {
        fields.push(("started", format_time(started)));
    }
    if let Some(finished) = build.finished_at {
        let took = run_time(build).map(|d| format!(" ({})", format_duration(d)));
        fields.push((
            "finished",
            format!("{}{}", format_time(finished), took.unwrap_or_default()),
        ));
    }
    if let Some(image) = &build.image {
        fields.push(("image", image.clone()));
    }
    if let Some(digest) = &build.digest {
        fields.push(("digest", digest.clone()));
    }
    if let (Some(cached), Some(total)) = (build.cached_steps, build.total_steps) {
        fields.push(("cache", format!("{cached}/{total} steps cached")));
    }
    if let Some(error) = &build.error {
        fields.push(("error", error.clone()));
    }
    let width = fields
        .iter()
        .map(|(label, _)| label.len())
        .max()
        .unwrap_or(0);
    fields
        .iter()
        .map(|(label, value)| format!("{label:<width$}  {value}\n"))
        .collect()
}

/// How long a finished build ran: from its (last) start to its end. A build cancelled while
/// queued never ran, so it has none.
pub fn run_time(build: &Build) -> Option<Duration> {
    if !build.status.is_finished() {
        return None;
    }
    let started = build.started_at?.millis();
    let finished = build.finished_at?.millis();
    u64::try_from(finished - started)
        .ok()
        .map(Duration::from_millis)
}

/// `0.4s`, `12.3s`, `2m05s`, `1h02m`: precise for short builds, short for long ones.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 60 {
        // Tenths, truncated, so 59.99 s does not show as "60.0s".
        format!("{}.{}s", secs, duration.subsec_millis() / 100)
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

/// `2025-12-04 21:02:55` (UTC): a table column has no room for RFC 3339's milliseconds.
pub fn format_time(at: Timestamp) -> String {
    let rfc3339 = at.to_rfc3339();
    match rfc3339.get(..19) {
        Some(seconds) => seconds.replacen('T', " ", 1),
        None => rfc3339,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::fake_server::{
        build_json, chunk, chunked_head, json_response, last_chunk, serve,
    };
    use crate::model::{BuildRequest, SourceInfo};

    const ID: &str = "01KBN6G4N0C5Q2ZJ4V4K3S9M7A";

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("slipway").chain(args.iter().copied()))
            .map(|cli| cli.command)
    }

    fn build(status: Status) -> Build {
        let request = BuildRequest {
            app: "hello".parse().unwrap(),
            options: BuildOptions::default(),
            description: None,
        };
        let source = SourceInfo {
            bytes: 10,
            sha256: "ab".into(),
        };
        let mut build = Build::new_queued(ID.parse().unwrap(), request, source);
        build.status = status;
        build.created_at = Timestamp::from_millis(1_764_882_175_123);
        build
    }

    fn finished(status: Status, took_ms: i64) -> Build {
        let mut build = build(status);
        build.started_at = Some(build.created_at.plus(Duration::from_secs(1)));
        build.finished_at = build
            .started_at
            .map(|t| Timestamp::from_millis(t.millis() + took_ms));
        build
    }

    #[test]
    fn submit_takes_every_option_and_defaults_dir_to_here() {
        let Ok(Command::Submit(args)) = parse(&[
            "submit",
            "--app",
            "hello",
            "--dockerfile",
            "./docker/Dockerfile",
            "--target",
            "runtime",
            "--build-arg",
            "A=1",
            "--build-arg",
            "B=two=2",
            "--no-cache",
            "--description",
            "first try",
            "--detach",
            "--server",
            "https://slipway.example:7878",
        ]) else {
            panic!("submit did not parse");
        };
        assert_eq!(args.dir, PathBuf::from("."));
        assert_eq!(
            args.params(),
            SubmitParams {
                app: "hello".into(),
                dockerfile: Some("docker/Dockerfile".into()),
                target: Some("runtime".into()),
                build_args: vec!["A=1".into(), "B=two=2".into()],
                no_cache: true,
                description: Some("first try".into()),
            }
        );
        assert!(args.detach);
        assert_eq!(args.connect.server, "https://slipway.example:7878");
    }

    #[test]
    fn submit_takes_a_directory() {
        let Ok(Command::Submit(args)) = parse(&["submit", "web/", "--app", "web"]) else {
            panic!("submit did not parse");
        };
        assert_eq!(args.dir, PathBuf::from("web/"));
        assert!(!args.no_cache && !args.detach);
        assert_eq!(args.dockerfile, None);
    }

    #[test]
    fn the_server_defaults_to_the_local_node() {
        let Ok(Command::Status(args)) = parse(&["status", ID]) else {
            panic!("status did not parse");
        };
        let expected =
            std::env::var("SLIPWAY_SERVER").unwrap_or_else(|_| DEFAULT_SERVER.to_string());
        assert_eq!(args.connect.server, expected);
    }

    #[test]
    fn submit_without_app_is_a_usage_error() {
        let error = parse(&["submit", "."]).unwrap_err();
        assert_eq!(
            error.kind(),
            clap::error::ErrorKind::MissingRequiredArgument
        );
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn invalid_values_are_usage_errors_before_any_upload() {
        for args in [
            &["submit", "--app", "Hello"][..],
            &["submit", "--app", "ok", "--build-arg", "NOEQUALS"],
            &["submit", "--app", "ok", "--dockerfile", "../Dockerfile"],
            &["submit", "--app", "ok", "--target", "a b"],
            &["builds", "--status", "done"],
            &["builds", "--limit", "0"],
            &["builds", "--limit", "201"],
            &["status", "not-an-id"],
            &["logs", &ID.to_lowercase()],
        ] {
            let error = parse(args).unwrap_err();
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
        }
    }

    #[test]
    fn the_token_is_not_a_flag() {
        let error = parse(&["status", ID, "--token", "s3cret"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn builds_takes_filters_and_json() {
        let Ok(Command::Builds(args)) = parse(&[
            "builds", "--app", "web", "--status", "failed", "--limit", "5", "--json",
        ]) else {
            panic!("builds did not parse");
        };
        assert_eq!(args.app.as_deref(), Some("web"));
        assert_eq!(args.status.as_deref(), Some("failed"));
        assert_eq!(args.limit, Some(5));
        assert!(args.json);
    }

    #[test]
    fn logs_status_and_cancel_take_an_id() {
        assert!(matches!(
            parse(&["logs", ID, "--no-follow"]),
            Ok(Command::Logs(LogsArgs {
                no_follow: true,
                ..
            }))
        ));
        assert!(matches!(
            parse(&["status", ID, "--json"]),
            Ok(Command::Status(StatusArgs { json: true, .. }))
        ));
        assert!(
            matches!(parse(&["cancel", ID]), Ok(Command::Cancel(CancelArgs { id, .. })) if id == ID)
        );
    }

    #[test]
    fn serve_takes_config_listen_and_data_dir() {
        let Ok(Command::Serve(args)) = parse(&[
            "serve",
            "--config",
            "/etc/slipway/other.toml",
            "--listen",
            "0.0.0.0:7878",
            "--data-dir",
            "/var/lib/slipway",
        ]) else {
            panic!("serve did not parse");
        };
        assert_eq!(
            args,
            ServeArgs {
                config: Some("/etc/slipway/other.toml".into()),
                listen: Some("0.0.0.0:7878".into()),
                data_dir: Some("/var/lib/slipway".into()),
            }
        );
    }

    #[test]
    fn durations_are_short_and_precise_enough() {
        assert_eq!(format_duration(Duration::from_millis(400)), "0.4s");
        assert_eq!(format_duration(Duration::from_millis(12_345)), "12.3s");
        assert_eq!(format_duration(Duration::from_millis(59_999)), "59.9s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
        assert_eq!(format_duration(Duration::from_secs(3_720)), "1h02m");
    }

    #[test]
    fn only_finished_builds_that_ran_have_a_run_time() {
        assert_eq!(
            run_time(&finished(Status::Failed, 12_345)),
            Some(Duration::from_millis(12_345))
        );
        let mut running = finished(Status::Running, 1);
        running.finished_at = None;
        assert_eq!(run_time(&running), None);
        let mut cancelled_while_queued = build(Status::Cancelled);
        cancelled_while_queued.finished_at = Some(cancelled_while_queued.created_at);
        assert_eq!(run_time(&cancelled_while_queued), None);
    }

    #[test]
    fn the_build_table_is_aligned() {
        let mut done = finished(Status::Succeeded, 12_345);
        done.image = Some(format!("127.0.0.1:5000/hello:{ID}"));
        let queued = build(Status::Queued);

        let table = build_table(&[done, queued]);

        let expected = format!(
            "ID                          APP    STATUS     CREATED              DURATION  IMAGE\n\
             {ID}  hello  succeeded  2025-12-04 21:02:55  12.3s     127.0.0.1:5000/hello:{ID}\n\
             {ID}  hello  queued     2025-12-04 21:02:55  -         -\n"
        );
        assert_eq!(table, expected);
    }

    #[test]
    fn an_empty_table_is_just_the_header() {
        assert_eq!(
            build_table(&[]),
            "ID  APP  STATUS  CREATED  DURATION  IMAGE\n"
        );
    }

    #[test]
    fn the_status_summary_shows_the_fields_that_have_values() {
        let mut failed = finished(Status::Failed, 2_000);
        failed.node = Some("node-a".into());
        failed.attempt = 2;
        failed.cached_steps = Some(3);
        failed.total_steps = Some(5);
        failed.error = Some("step 4/5 exited with code 1".into());

        assert_eq!(
            status_summary(&failed),
            format!(
                "build     {ID}\n\
                 app       hello\n\
                 status    failed\n\
                 node      node-a\n\
                 attempt   2\n\
                 created   2025-12-04 21:02:55\n\
                 started   2025-12-04 21:02:56\n\
                 finished  2025-12-04 21:02:58 (2.0s)\n\
                 cache     3/5 steps cached\n\
                 error     step 4/5 exited with code 1\n"
            )
        );
    }

    #[test]
    fn submit_ends_with_the_image_or_the_reason() {
        let mut succeeded = build(Status::Succeeded);
        succeeded.image = Some("reg/hello:x".into());
        assert_eq!(outcome(&succeeded), Ok(Some("reg/hello:x")));
        let mut failed = build(Status::Failed);
        failed.error = Some("no space left".into());
        assert_eq!(
            outcome(&failed),
            Err(format!("build {ID} failed: no space left"))
        );
        assert_eq!(
            outcome(&build(Status::Cancelled)),
            Err(format!("build {ID} cancelled"))
        );
    }

    #[test]
    fn cancel_says_when_a_running_build_has_yet_to_stop() {
        let mut running = build(Status::Running);
        running.cancel_requested = true;
        assert_eq!(
            cancel_summary(&running),
            format!("build {ID} running, cancel requested")
        );
        assert_eq!(
            cancel_summary(&build(Status::Cancelled)),
            format!("build {ID} cancelled")
        );
    }

    #[test]
    fn an_unauthorized_answer_without_a_token_hints_at_the_variable() {
        let error = CliError::Client(ClientError::Server {
            status: 401,
            code: "unauthorized".into(),
            message: "a bearer token is required".into(),
        });
        assert_eq!(
            error_line(&error, false),
            "server refused: a bearer token is required (unauthorized); set SLIPWAY_TOKEN"
        );
        assert_eq!(
            error_line(&error, true),
            "server refused: a bearer token is required (unauthorized)"
        );
    }

    #[test]
    fn a_missing_dockerfile_is_caught_before_packing() {
        let dir = tempfile::tempdir().unwrap();
        let error = check_context(dir.path(), "Dockerfile").unwrap_err();
        assert!(matches!(error, CliError::DockerfileMissing { .. }));
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        assert!(check_context(dir.path(), "Dockerfile").is_ok());
    }

    #[tokio::test]
    async fn packing_writes_a_gzip_archive() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();

        let archive = pack_to_temp_file(dir.path().to_path_buf(), "Dockerfile".into())
            .await
            .unwrap();

        let bytes = std::fs::read(archive.path()).unwrap();
        assert_eq!(&bytes[..2], b"\x1f\x8b");
    }

    #[tokio::test]
    async fn a_broken_log_stream_is_resumed_without_repeating_lines() {
        let broken = vec![chunked_head(), chunk("step 1\nstep 2\nste")];
        let whole = vec![
            chunked_head(),
            chunk("step 1\nstep 2\nstep 3\n"),
            last_chunk(),
        ];
        let done = vec![json_response("200 OK", &build_json(ID, "succeeded"))];
        let (url, server) = serve(vec![broken, whole, done]).await;
        let client = Client::new(&url, None, None).unwrap();
        let mut out = Vec::new();

        let build = follow_until_finished(&client, ID, &mut out).await.unwrap();

        assert_eq!(build.status, Status::Succeeded);
        assert_eq!(String::from_utf8(out).unwrap(), "step 1\nstep 2\nstep 3\n");
        assert_eq!(server.await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn a_log_that_ends_before_the_build_is_followed_again() {
        let early = vec![chunked_head(), chunk("step 1\n"), last_chunk()];
        let running = vec![json_response("200 OK", &build_json(ID, "running"))];
        let rest = vec![chunked_head(), chunk("step 1\nstep 2\n"), last_chunk()];
        let done = vec![json_response("200 OK", &build_json(ID, "failed"))];
        let (url, _server) = serve(vec![early, running, rest, done]).await;
        let client = Client::new(&url, None, None).unwrap();
        let mut out = Vec::new();

        let build = follow_until_finished(&client, ID, &mut out).await.unwrap();

        assert_eq!(build.status, Status::Failed);
        assert_eq!(String::from_utf8(out).unwrap(), "step 1\nstep 2\n");
    }
}
