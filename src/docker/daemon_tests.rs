//! The module against the real daemon and registry that `scripts/testbed` starts. Each test uses
//! its own tags and repositories and removes the images it made.

use std::collections::BTreeMap;
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use tokio_util::sync::CancellationToken;

use super::{BuildRequest, DockerEngine, DockerError, RegistryCredentials};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn base_image() -> String {
    env_or("SLIPWAY_TEST_BASE_IMAGE", "slipway-test/busybox:1")
}

fn registry() -> String {
    env_or("SLIPWAY_TEST_REGISTRY", "127.0.0.1:5055")
}

fn registry_credentials() -> RegistryCredentials {
    RegistryCredentials {
        username: env_or("SLIPWAY_TEST_REGISTRY_USER", "AWS"),
        password: env_or("SLIPWAY_TEST_REGISTRY_PASSWORD", "123456789012-auth-token"),
        server: registry(),
    }
}

async fn engine() -> DockerEngine {
    let host = env_or("DOCKER_HOST", "unix:///var/run/docker.sock");
    let engine = DockerEngine::connect(&host)
        .await
        .unwrap_or_else(|e| panic!("{e}: start the test services with scripts/test"));
    let base = base_image();
    let present = Command::new("docker")
        .args(["image", "inspect", &base])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        present,
        "base image {base} is missing: run scripts/testbed (or scripts/test)"
    );
    engine
}

/// "<what>-<pid>-<n>": unique across concurrent test runs and within one.
fn unique(what: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{what}-{}-{n}", std::process::id())
}

/// Removes the listed images (tags or ids) when the test ends, passed or not.
struct RemoveImages(Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .arg("rmi")
            .arg("-f")
            .args(&self.0)
            .output();
    }
}

/// A gzip tar context with `files`, streamed in small chunks as the runner streams it.
fn context(files: &[(&str, &str)]) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gzip);
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, path, content.as_bytes())
            .expect("append to tar");
    }
    let gz = tar
        .into_inner()
        .expect("finish tar")
        .finish()
        .expect("finish gzip");
    let chunks: Vec<_> = gz
        .chunks(256)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures_util::stream::iter(chunks)
}

fn request(tag: &str) -> BuildRequest {
    BuildRequest {
        tag: tag.to_owned(),
        dockerfile: "Dockerfile".to_owned(),
        target: None,
        build_args: BTreeMap::new(),
        no_cache: false,
        labels: BTreeMap::from([("slipway.app".to_owned(), "docker-tests".to_owned())]),
        network_mode: "none".to_owned(),
        memory_bytes: Some(256 << 20),
        cpu_quota: Some(100_000),
        cache_from: Vec::new(),
    }
}

/// Builds `dockerfile` (plus `files`) as `tag`, collecting the log lines.
async fn build(
    engine: &DockerEngine,
    request: &BuildRequest,
    dockerfile: &str,
    files: &[(&str, &str)],
) -> (Result<super::BuiltImage, DockerError>, Vec<String>) {
    let mut all_files = vec![("Dockerfile", dockerfile)];
    all_files.extend_from_slice(files);
    let mut lines = Vec::new();
    let result = engine
        .build(
            request,
            context(&all_files),
            &mut |line| lines.push(line.to_owned()),
            &CancellationToken::new(),
        )
        .await;
    (result, lines)
}

fn docker_cli(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("run docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn multi_step_build_streams_its_log_and_returns_the_image_id() {
    let engine = engine().await;
    let marker = unique("first");
    let tag = format!("slipway-docker-test/multi:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let dockerfile = format!(
        "FROM {}\nRUN echo {marker}\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n",
        base_image()
    );

    let (built, lines) = build(
        &engine,
        &request(&tag),
        &dockerfile,
        &[("hello.txt", "hello from the context")],
    )
    .await;

    let built = built.expect("build succeeds");
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("Step 1/5 : FROM {}", base_image())),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l == &marker), "{lines:#?}");
    assert!(
        lines.iter().any(|l| l == "hello from the context"),
        "{lines:#?}"
    );
    assert!(built.image_id.starts_with("sha256:"), "{built:?}");
    assert_eq!(
        docker_cli(&["image", "inspect", "-f", "{{.Id}}", &tag]).trim(),
        built.image_id
    );
    // FROM, RUN, COPY, RUN, and the LABEL step the classic builder adds for build labels.
    assert_eq!((built.total_steps, built.cached_steps), (5, 0));
}

#[tokio::test]
async fn rebuild_reports_every_step_cached() {
    let engine = engine().await;
    let tag = format!("slipway-docker-test/rebuild:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let dockerfile = format!(
        "FROM {}\nRUN echo {}\nCOPY a.txt /a.txt\nRUN cat /a.txt\n",
        base_image(),
        unique("rebuild")
    );
    let files = [("a.txt", "a")];
    let (first, _) = build(&engine, &request(&tag), &dockerfile, &files).await;
    let first = first.expect("first build succeeds");

    let started = Instant::now();
    let (second, _) = build(&engine, &request(&tag), &dockerfile, &files).await;
    let second = second.expect("second build succeeds");

    eprintln!("all-cached rebuild took {:?}", started.elapsed());
    assert_eq!(second.image_id, first.image_id);
    // Every step but FROM (which is never "cached") came from the cache.
    assert_eq!((second.total_steps, second.cached_steps), (5, 4));
}

#[tokio::test]
async fn failing_run_is_step_failed_naming_the_step() {
    let engine = engine().await;
    let tag = format!("slipway-docker-test/fail:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let dockerfile = format!(
        "FROM {}\nRUN echo {}\nRUN exit 3\n",
        base_image(),
        unique("ok")
    );

    let (result, _) = build(&engine, &request(&tag), &dockerfile, &[]).await;

    let error = result.expect_err("build fails");
    assert!(
        matches!(&error, DockerError::StepFailed { step, .. } if step == "3/4"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "step 3/4 `RUN exit 3` failed: The command '/bin/sh -c exit 3' returned a non-zero code: 3"
    );
}

#[tokio::test]
async fn build_args_reach_the_target_stage_and_later_stages_do_not_run() {
    let engine = engine().await;
    let tag = format!("slipway-docker-test/target:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let greeting = unique("hello");
    let dockerfile = format!(
        "FROM {base} AS first\nARG GREETING\nRUN echo \"greeting=$GREETING\" > /greeting && cat /greeting\n\
         FROM {base} AS second\nRUN echo second-stage-ran\n",
        base = base_image()
    );
    let mut request = request(&tag);
    request.target = Some("first".to_owned());
    request.build_args = BTreeMap::from([("GREETING".to_owned(), greeting.clone())]);

    let (result, lines) = build(&engine, &request, &dockerfile, &[]).await;

    result.expect("build succeeds");
    assert!(
        lines.iter().any(|l| l == &format!("greeting={greeting}")),
        "{lines:#?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("second-stage-ran")),
        "{lines:#?}"
    );
    let in_image = docker_cli(&["run", "--rm", "--network", "none", &tag, "cat", "/greeting"]);
    assert_eq!(in_image.trim(), format!("greeting={greeting}"));
}

#[tokio::test]
async fn unknown_target_is_build_failed_with_dockers_message() {
    let engine = engine().await;
    let tag = format!("slipway-docker-test/no-target:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let mut request = request(&tag);
    request.target = Some("missing".to_owned());

    let dockerfile = format!("FROM {} AS only\nRUN true\n", base_image());
    let (result, _) = build(&engine, &request, &dockerfile, &[]).await;

    match result {
        Err(DockerError::BuildFailed { message }) => {
            assert_eq!(
                message,
                "failed to reach build target missing in Dockerfile"
            );
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn dockerfile_syntax_error_is_build_failed_with_dockers_message() {
    let engine = engine().await;
    let tag = format!("slipway-docker-test/syntax:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let dockerfile = format!("FROM {}\nFROBNICATE now\n", base_image());

    let (result, _) = build(&engine, &request(&tag), &dockerfile, &[]).await;

    match result {
        Err(DockerError::BuildFailed { message }) => {
            assert!(
                message.contains("unknown instruction: FROBNICATE"),
                "{message}"
            );
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
}

#[tokio::test]
async fn context_error_is_reported_as_the_contexts_own() {
    let engine = engine().await;
    let tag = format!("slipway-docker-test/bad-context:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let rejected = futures_util::stream::iter(vec![
        Ok(Bytes::from_static(&[0x1f, 0x8b])),
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "entry `../etc` leaves the context",
        )),
    ]);
    let mut lines = Vec::new();

    let result = engine
        .build(
            &request(&tag),
            rejected,
            &mut |line| lines.push(line.to_owned()),
            &CancellationToken::new(),
        )
        .await;

    match result {
        Err(DockerError::Context { source }) => {
            assert_eq!(source.to_string(), "entry `../etc` leaves the context");
        }
        other => panic!("expected Context, got {other:?}"),
    }
}

#[tokio::test]
async fn cancel_during_run_returns_promptly_and_leaves_no_container() {
    let engine = engine().await;
    let marker = unique("cancel-me");
    let tag = format!("slipway-docker-test/cancel:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let dockerfile = format!("FROM {}\nRUN echo {marker} && sleep 300\n", base_image());
    let cancel = CancellationToken::new();
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let build = tokio::spawn({
        let (engine, cancel, request) = (engine.clone(), cancel.clone(), request(&tag));
        async move {
            let mut on_line = move |line: &str| {
                let _ = line_tx.send(line.to_owned());
            };
            let context = context(&[("Dockerfile", &dockerfile)]);
            engine.build(&request, context, &mut on_line, &cancel).await
        }
    });
    // The RUN is under way once its echo shows in the log.
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = line_rx.recv().await {
            if line == marker {
                return;
            }
        }
    })
    .await
    .expect("the RUN step starts");
    let running = docker_cli(&["ps", "--no-trunc", "--format", "{{.Command}}"]);
    assert!(
        running.contains(&marker),
        "the RUN container runs before the cancel: {running}"
    );

    let cancelled_at = Instant::now();
    cancel.cancel();
    let result = build.await.expect("build task");

    let took = cancelled_at.elapsed();
    eprintln!("cancel took {took:?}");
    assert!(matches!(result, Err(DockerError::Cancelled)), "{result:?}");
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    let left = docker_cli(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"]);
    assert!(
        !left.contains(&marker),
        "a container of the cancelled step remains: {left}"
    );
}

/// Builds a one-step image and tags it into the test registry as `<registry>/<repository>:<tag>`.
async fn image_in_registry_repository(engine: &DockerEngine, what: &str) -> (String, String) {
    let local = format!("slipway-docker-test/{what}:{}", unique("t"));
    let dockerfile = format!("FROM {}\nRUN echo {} > /id\n", base_image(), unique(what));
    let (built, _) = build(engine, &request(&local), &dockerfile, &[]).await;
    built.expect("build succeeds");
    let repository = format!("{}/slipway-docker-test/{}", registry(), unique(what));
    let tag = unique("t");
    engine
        .tag(&local, &repository, &tag)
        .await
        .expect("tag succeeds");
    let _ = Command::new("docker").args(["rmi", &local]).output();
    (repository, tag)
}

fn registry_digest(repository: &str, tag: &str) -> String {
    let credentials = registry_credentials();
    let path = repository
        .strip_prefix(&format!("{}/", registry()))
        .expect("repository in registry");
    let out = Command::new("curl")
        .args([
            "-s",
            "-I",
            "-u",
            &format!("{}:{}", credentials.username, credentials.password),
        ])
        .args([
            "-H",
            "Accept: application/vnd.docker.distribution.manifest.v2+json",
        ])
        .arg(format!("http://{}/v2/{path}/manifests/{tag}", registry()))
        .output()
        .expect("run curl");
    let headers = String::from_utf8_lossy(&out.stdout);
    headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("docker-content-digest:")
                .map(|d| d.trim().to_owned())
        })
        .unwrap_or_else(|| {
            panic!(
                "registry at {} answers no digest (run scripts/testbed): {headers}",
                registry()
            )
        })
}

#[tokio::test]
async fn push_returns_the_digest_the_registry_serves() {
    let engine = engine().await;
    let (repository, tag) = image_in_registry_repository(&engine, "push").await;
    let _cleanup = RemoveImages(vec![format!("{repository}:{tag}")]);
    let mut lines = Vec::new();

    let digest = engine
        .push(
            &repository,
            &tag,
            Some(&registry_credentials()),
            &mut |line| lines.push(line.to_owned()),
            &CancellationToken::new(),
        )
        .await
        .expect("push succeeds");

    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(digest, registry_digest(&repository, &tag));
    assert!(lines.iter().any(|l| l == "Pushed"), "{lines:#?}");
    assert!(
        lines.iter().filter(|l| l.as_str() == "Pushing").count() <= 2,
        "{lines:#?}"
    );
}

#[tokio::test]
async fn push_with_a_wrong_password_fails_without_echoing_it() {
    let engine = engine().await;
    let (repository, tag) = image_in_registry_repository(&engine, "denied").await;
    let _cleanup = RemoveImages(vec![format!("{repository}:{tag}")]);
    let wrong = RegistryCredentials {
        password: "not-the-password-4711".to_owned(),
        ..registry_credentials()
    };

    let result = engine
        .push(
            &repository,
            &tag,
            Some(&wrong),
            &mut |_| {},
            &CancellationToken::new(),
        )
        .await;

    let error = result.expect_err("push is refused");
    assert!(matches!(error, DockerError::Push { .. }), "{error:?}");
    let text = format!("{error} {error:?}");
    assert!(!text.contains("not-the-password-4711"), "{text}");
}

#[tokio::test]
async fn pull_brings_back_a_pushed_image() {
    let engine = engine().await;
    let (repository, tag) = image_in_registry_repository(&engine, "pull").await;
    let reference = format!("{repository}:{tag}");
    let _cleanup = RemoveImages(vec![reference.clone()]);
    engine
        .push(
            &repository,
            &tag,
            Some(&registry_credentials()),
            &mut |_| {},
            &CancellationToken::new(),
        )
        .await
        .expect("push succeeds");
    docker_cli(&["rmi", &reference]);

    engine
        .pull(&reference, Some(&registry_credentials()))
        .await
        .expect("pull succeeds");

    assert!(
        !docker_cli(&["image", "inspect", "-f", "{{.Id}}", &reference])
            .trim()
            .is_empty()
    );
}

#[tokio::test]
async fn connecting_to_a_missing_socket_names_the_host() {
    let result = DockerEngine::connect("unix:///nonexistent/docker.sock").await;

    let error = result.expect_err("no daemon there");
    assert!(matches!(error, DockerError::Connect { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("unix:///nonexistent/docker.sock"),
        "{error}"
    );
}

#[tokio::test]
async fn memory_and_cpu_limits_reach_the_run_step() {
    let engine = engine().await;
    let tag = format!("slipway-docker-test/limits:{}", unique("t"));
    let _cleanup = RemoveImages(vec![tag.clone()]);
    let dockerfile = format!(
        "FROM {}\nRUN echo {} && cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us\n",
        base_image(),
        unique("limits")
    );
    let mut request = request(&tag);
    // Above the 2 GiB bollard's i32 `memory` option can express.
    request.memory_bytes = Some(3 << 30);
    request.cpu_quota = Some(50_000);

    let (result, lines) = build(&engine, &request, &dockerfile, &[]).await;

    result.expect("build succeeds");
    assert!(lines.iter().any(|l| l == "3221225472"), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "50000"), "{lines:#?}");
}

/// Prune removes images daemon-wide, so its tests need a daemon of their own (a second dockerd
/// as TESTBED.md describes, with the base image loaded); they never touch the shared one, and
/// take turns on the private one.
async fn private_engine() -> (DockerEngine, tokio::sync::MutexGuard<'static, ()>) {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    let host = std::env::var("SLIPWAY_TEST_PRIVATE_DOCKER_HOST").unwrap_or_else(|_| {
        panic!(
            "set SLIPWAY_TEST_PRIVATE_DOCKER_HOST to a dockerd only this test uses (see TESTBED.md)"
        )
    });
    let engine = DockerEngine::connect(&host)
        .await
        .unwrap_or_else(|e| panic!("{e}: start a private dockerd for the prune tests"));
    (engine, turn)
}

async fn build_labelled(engine: &DockerEngine, build_id: &str) -> String {
    let tag = format!("slipway-docker-test/prune:{}", unique(build_id));
    let mut request = request(&tag);
    request
        .labels
        .insert(super::APP_LABEL.to_owned(), build_id.to_owned());
    // ~100 KB of layer only this image has.
    let dockerfile = format!(
        "FROM {}\nRUN i=0; while [ $i -lt 2000 ]; do echo {}-0123456789012345678901234567890123456789; i=$((i+1)); done > /filler\n",
        base_image(),
        unique(build_id)
    );
    let (built, _) = build(engine, &request, &dockerfile, &[]).await;
    built.expect("build succeeds").image_id
}

#[tokio::test]
#[ignore = "needs SLIPWAY_TEST_PRIVATE_DOCKER_HOST: a dockerd only this test uses"]
async fn prune_removes_the_oldest_build_images_until_under_the_limit() {
    let (engine, _turn) = private_engine().await;
    let older = build_labelled(&engine, "older").await;
    // Image `Created` has one-second resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newer = build_labelled(&engine, "newer").await;
    let before = engine.prune(u64::MAX).await.expect("prune nothing");
    assert_eq!(before, super::PruneReport::default());
    let storage = super::prune::layer_storage(&engine.list_all_images().await.expect("list"));

    let report = engine.prune(storage - 1).await.expect("prune");

    let remaining = engine.list_all_images().await.expect("list");
    assert!(
        !remaining.iter().any(|i| i.id == older),
        "the older image is gone"
    );
    assert!(
        remaining.iter().any(|i| i.id == newer),
        "the newer image stays"
    );
    assert!(
        report.images_deleted >= 2,
        "the image and its private RUN layer: {report:?}"
    );
    assert!(report.space_reclaimed >= 100_000, "{report:?}");
}

#[tokio::test]
#[ignore = "needs SLIPWAY_TEST_PRIVATE_DOCKER_HOST: a dockerd only this test uses"]
async fn prune_never_removes_unlabelled_images() {
    let (engine, _turn) = private_engine().await;
    let base = docker_cli_on_private(&["image", "inspect", "-f", "{{.Id}}", &base_image()]);

    engine.prune(0).await.expect("prune");

    let after = docker_cli_on_private(&["image", "inspect", "-f", "{{.Id}}", &base_image()]);
    assert_eq!(after, base);
    assert!(!after.trim().is_empty(), "base image still there");
}

fn docker_cli_on_private(args: &[&str]) -> String {
    let host = std::env::var("SLIPWAY_TEST_PRIVATE_DOCKER_HOST").expect("private docker host");
    let out = Command::new("docker")
        .arg("-H")
        .arg(host)
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
