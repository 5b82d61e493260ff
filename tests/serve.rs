//! `slipway serve` as the binary a newcomer runs: it starts on embedded defaults, passes the
//! HTTP contract check, and stops cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::testbed;

/// The shared contract checker when this checkout sits next to it, else the copy in the repo.
fn contract_check() -> PathBuf {
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/contract-check");
    if shared.exists() {
        shared
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/contract-check")
    }
}

/// Stops the node even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The contract check always builds the same Dockerfile as app `contract-check` and expects its
/// RUN output in the log, so no cached layer of an earlier run may survive.
fn remove_contract_check_images() {
    let images = common::docker(&[
        "images",
        "--format",
        "{{.Repository}}:{{.Tag}}",
        "slipway/contract-check",
    ]);
    for image in String::from_utf8_lossy(&images.stdout).lines() {
        let _ = common::docker(&["rmi", "-f", image]);
    }
}

#[test]
fn the_binary_serves_the_http_contract_and_stops_on_sigterm() {
    let bed = testbed();
    remove_contract_check_images();
    let data_dir = tempfile::tempdir().unwrap();
    let mut node = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir.path())
            .env("SLIPWAY_NODE_ID", common::unique("contract"))
            // The test machines' dockerd has no usable default bridge.
            .env("SLIPWAY_DOCKER__NETWORK_MODE", "none")
            .stderr(Stdio::piped())
            .spawn()
            .expect("start slipway serve"),
    );
    let mut stderr = BufReader::new(node.0.stderr.take().unwrap());
    let mut url = None;
    let mut seen = String::new();
    for _ in 0..50 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
        if let Some(rest) = line.trim().strip_prefix("slipway: listening on ") {
            url = Some(rest.to_string());
            break;
        }
    }
    let url = url.unwrap_or_else(|| panic!("the node did not say where it listens:\n{seen}"));
    // Keep draining the node's log so it never blocks on a full pipe.
    let drain = std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));

    let check = Command::new("python3")
        .arg(contract_check())
        .arg(&url)
        .args(["--base-image", &bed.base_image])
        .output()
        .expect("run contract-check");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "contract check failed:\n{report}\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(report.contains("contract: all checks passed"), "{report}");

    let kill = Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = node.0.wait().unwrap();
    assert!(
        status.success(),
        "slipway serve should exit 0 on SIGTERM: {status}"
    );
    let _ = drain.join();
    assert!(data_dir.path().join("cache.db").exists());

    remove_contract_check_images();
}
