//! A real slipway node started in-process on `127.0.0.1:0`, with its own data directory, and
//! the HTTP calls tests make against it.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use slipway::config::Settings;
use slipway::server::RunningNode;

pub struct TestNode {
    pub url: String,
    pub http: reqwest::Client,
    pub settings: Settings,
    running: Option<RunningNode>,
    /// Kept so the data directory lives as long as the node.
    pub data_dir: tempfile::TempDir,
}

/// Starts a node on embedded defaults, adjusted by `configure`.
pub async fn start_node(configure: impl FnOnce(&mut Settings)) -> TestNode {
    super::testbed();
    let data_dir = tempfile::tempdir().expect("temp data dir");
    let mut settings = Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.path().to_path_buf(),
        node_id: super::unique("node"),
        ..Settings::default()
    };
    // The test machines' dockerd has no usable default bridge; builds here need no network.
    settings.docker.network_mode = "none".to_string();
    configure(&mut settings);
    let running = slipway::server::start(settings.clone())
        .await
        .unwrap_or_else(|e| {
            panic!("the node did not start: {e} (is dockerd up? run scripts/test)")
        });
    TestNode {
        url: format!("http://{}", running.addr),
        http: reqwest::Client::new(),
        settings,
        running: Some(running),
        data_dir,
    }
}

/// An answer: status and parsed JSON body (Null when the body is not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub json: Value,
}

impl Answer {
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"]
            .as_str()
            .unwrap_or("<no error code>")
    }

    pub fn error_message(&self) -> &str {
        self.json["error"]["message"]
            .as_str()
            .unwrap_or("<no error message>")
    }
}

impl TestNode {
    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await;
        }
    }

    /// `POST /builds?{query}` with `body` as application/gzip.
    pub async fn submit(&self, query: &str, body: Vec<u8>) -> Answer {
        let response = self
            .http
            .post(format!("{}/builds?{query}", self.url))
            .header("content-type", "application/gzip")
            .body(body)
            .send()
            .await
            .expect("POST /builds");
        answer(response).await
    }

    /// Submits and returns the new build's id, asserting 202.
    pub async fn submit_ok(&self, query: &str, body: Vec<u8>) -> String {
        let a = self.submit(query, body).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "submit failed: {}", a.json);
        a.json["id"].as_str().expect("build id").to_string()
    }

    pub async fn get(&self, path: &str) -> Answer {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        answer(response).await
    }

    pub async fn post(&self, path: &str) -> Answer {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        answer(response).await
    }

    pub async fn build(&self, id: &str) -> Value {
        let a = self.get(&format!("/builds/{id}")).await;
        assert_eq!(a.status, StatusCode::OK, "GET /builds/{id}: {}", a.json);
        a.json
    }

    /// Polls until the build has finished; panics after `limit`.
    pub async fn wait_finished(&self, id: &str, limit: Duration) -> Value {
        self.wait_for(id, limit, |b| {
            matches!(
                b["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }

    pub async fn wait_for(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let build = self.build(id).await;
            if done(&build) {
                return build;
            }
            assert!(
                Instant::now() < deadline,
                "build {id} did not get there in {limit:?}: {build}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole text log, following it until the build ends.
    pub async fn log_text(&self, id: &str) -> String {
        self.http
            .get(format!("{}/builds/{id}/logs", self.url))
            .send()
            .await
            .expect("GET logs")
            .text()
            .await
            .expect("log body")
    }

    /// Files left in the source store (the staging directory included).
    pub fn stored_sources(&self) -> Vec<String> {
        let dir = self.data_dir.path().join("sources");
        let mut found = Vec::new();
        for entry in walk(&dir) {
            found.push(entry.strip_prefix(&dir).unwrap().display().to_string());
        }
        found.sort();
        found
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("response body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

/// Removes the images a test made (ignores ones already gone).
pub fn remove_images(references: &[&str]) {
    for reference in references {
        let _ = super::docker(&["rmi", "-f", reference]);
    }
}
