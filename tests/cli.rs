//! The `slipway` binary as a user runs it: `submit` packs a directory honouring .dockerignore,
//! follows the log and exits by the outcome; `builds`, `status`, `logs`, `cancel` talk to any
//! server given by `--server` or `SLIPWAY_SERVER`.

mod common;

use std::process::{Command, Output};

use common::node::{TestNode, remove_images, start_node};
use common::{dockerfile_app, testbed, unique};

fn slipway(node: &TestNode, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_slipway"));
    command
        .args(args)
        .env("SLIPWAY_SERVER", &node.url)
        .env_remove("SLIPWAY_TOKEN");
    command
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("run slipway"))
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_honours_dockerignore_follows_the_log_and_prints_the_image_last() {
    let node = start_node(|_| {}).await;
    let app = unique("cli-submit");
    let dir = tempfile::tempdir().unwrap();
    let dockerfile = format!(
        "FROM {}\nCOPY . /ctx\nRUN cd /ctx && find . -type f | sort | sed 's/^/ctx: /'\n",
        testbed().base_image
    );
    dockerfile_app(
        dir.path(),
        &[
            ("Dockerfile", &dockerfile),
            (
                ".dockerignore",
                "# build output\n*.log\n**/secret.txt\nnode_modules\ndocs/*\n!docs/keep.md\n",
            ),
            ("app.sh", "echo app"),
            ("build.log", "excluded"),
            ("src/main.sh", "echo main"),
            ("src/deep/secret.txt", "excluded"),
            ("node_modules/pkg/index.js", "excluded"),
            ("docs/drop.md", "excluded"),
            ("docs/keep.md", "kept by the exception"),
            ("logs/today.log", "kept: *.log only matches at the root"),
        ],
    );
    let output = run({
        let mut c = slipway(
            &node,
            &["submit", dir.path().to_str().unwrap(), "--app", &app],
        );
        c.env_remove("SLIPWAY_SERVER").args(["--server", &node.url]);
        c
    })
    .await;
    let out = stdout(&output);
    assert!(
        output.status.success(),
        "stdout:\n{out}\nstderr:\n{}",
        stderr(&output)
    );

    let listed: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("ctx: "))
        .collect();
    assert_eq!(
        listed,
        [
            "./.dockerignore",
            "./Dockerfile",
            "./app.sh",
            "./docs/keep.md",
            "./logs/today.log",
            "./src/main.sh"
        ]
    );
    let image = out.lines().last().unwrap();
    assert!(
        image.starts_with(&format!("slipway/{app}:")),
        "last line should be the image: {image}"
    );
    let id = image.rsplit(':').next().unwrap();
    assert_eq!(node.build(id).await["status"], "succeeded");
    assert!(
        stderr(&output).contains(&format!("build {id} queued")),
        "{}",
        stderr(&output)
    );
    remove_images(&[image]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_of_a_failing_build_exits_non_zero_with_the_error() {
    let node = start_node(|_| {}).await;
    let app = unique("cli-fail");
    let dir = tempfile::tempdir().unwrap();
    dockerfile_app(
        dir.path(),
        &[(
            "Dockerfile",
            &format!("FROM {}\nRUN exit 7\n", testbed().base_image),
        )],
    );
    let output = run(slipway(
        &node,
        &["submit", dir.path().to_str().unwrap(), "--app", &app],
    ))
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("returned a non-zero code: 7"),
        "{}",
        stderr(&output)
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detach_prints_the_id_and_the_other_commands_find_the_build() {
    let node = start_node(|_| {}).await;
    let app = unique("cli-detach");
    let dir = tempfile::tempdir().unwrap();
    dockerfile_app(
        dir.path(),
        &[(
            "Dockerfile",
            &format!(
                "FROM {}\nRUN echo detached-build-ran\n",
                testbed().base_image
            ),
        )],
    );
    let output = run(slipway(
        &node,
        &[
            "submit",
            dir.path().to_str().unwrap(),
            "--app",
            &app,
            "--detach",
        ],
    ))
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let id = stdout(&output).trim().to_string();
    assert_eq!(id.len(), 26, "--detach prints just the id: {id:?}");

    let logs = run(slipway(&node, &["logs", &id])).await;
    assert!(logs.status.success());
    assert!(
        stdout(&logs).contains("\ndetached-build-ran\n"),
        "{}",
        stdout(&logs)
    );

    let status = run(slipway(&node, &["status", &id, "--json"])).await;
    let build: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(build["status"], "succeeded");

    let builds = run(slipway(&node, &["builds", "--app", &app])).await;
    assert!(builds.status.success());
    let table = stdout(&builds);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&id) && l.contains("succeeded")),
        "{table}"
    );

    let cancel = run(slipway(&node, &["cancel", &id])).await;
    assert_eq!(cancel.status.code(), Some(1));
    assert!(
        stderr(&cancel).contains("already succeeded"),
        "{}",
        stderr(&cancel)
    );
    remove_images(&[&format!("slipway/{app}:{id}")]);
    node.stop().await;
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["builds", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.starts_with("slipway: ") && err.contains("127.0.0.1:9"),
        "{err}"
    );
}

#[tokio::test]
async fn an_invalid_app_name_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["submit", ".", "--app", "Bad Name"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("Bad Name"), "{}", stderr(&output));
}
