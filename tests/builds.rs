//! Builds end to end on embedded defaults: a real node, the real dockerd, the real registry.

mod common;

use std::time::Duration;

use common::node::{TestNode, remove_images, start_node};
use common::{docker, testbed, tgz, unique};
use futures_util::StreamExt;
use reqwest::StatusCode;

const BUILD_LIMIT: Duration = Duration::from_secs(120);

fn dockerfile(body: &str) -> String {
    format!("FROM {}\n{body}", testbed().base_image)
}

async fn build_to_end(node: &TestNode, query: &str, files: &[(&str, &str)]) -> serde_json::Value {
    let id = node.submit_ok(query, tgz(files)).await;
    node.wait_finished(&id, BUILD_LIMIT).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_step_build_succeeds_and_logs_every_step() {
    let node = start_node(|_| {}).await;
    let app = unique("multistep");
    let df = dockerfile(&format!(
        "RUN echo first-step-output # {app}\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n"
    ));
    let files = [
        ("Dockerfile", df.as_str()),
        ("hello.txt", "hello from the context"),
    ];

    let posted = node
        .submit(&format!("app={app}&description=first"), tgz(&files))
        .await;
    assert_eq!(posted.status, StatusCode::ACCEPTED, "{}", posted.json);
    let id = posted.json["id"].as_str().unwrap().to_string();
    assert_eq!(posted.headers["location"], format!("/builds/{id}").as_str());
    assert_eq!(posted.json["status"], "queued");
    assert_eq!(posted.json["description"], "first");

    let log = node.log_text(&id).await;
    let build = node.build(&id).await;
    assert_eq!(build["status"], "succeeded", "{build}\n{log}");
    let image = format!("slipway/{app}:{id}");
    assert_eq!(build["image"], image.as_str());
    assert_eq!(build["error"], serde_json::Value::Null);
    assert_eq!(build["attempt"], 1);
    assert!(
        log.contains("Step 2/5 : RUN echo first-step-output"),
        "{log}"
    );
    assert!(log.contains("\nfirst-step-output\n"), "{log}");
    assert!(log.contains("\nhello from the context\n"), "{log}");

    let label = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"slipway.app\"}}",
        &image,
    ]);
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), app);
    remove_images(&[&image]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_with_nothing_changed_takes_every_step_from_the_cache() {
    let node = start_node(|_| {}).await;
    let app = unique("rebuild");
    let df = dockerfile(&format!(
        "RUN echo {app} > /marker\nCOPY a.txt /a.txt\nRUN cat /marker /a.txt\n"
    ));
    let files = [("Dockerfile", df.as_str()), ("a.txt", "unchanged")];

    let first = build_to_end(&node, &format!("app={app}"), &files).await;
    let second_id = node.submit_ok(&format!("app={app}"), tgz(&files)).await;
    let log = node.log_text(&second_id).await;
    let second = node.build(&second_id).await;

    assert_eq!(first["status"], "succeeded");
    assert_eq!(second["status"], "succeeded", "{second}");
    // RUN, COPY, RUN and the slipway.app LABEL step; FROM is never "cached".
    assert_eq!(log.matches("Using cache").count(), 4, "{log}");
    assert_eq!(second["cached_steps"], 4, "{second}");
    assert_eq!(second["total_steps"], 5, "{second}");
    assert_eq!(first["cached_steps"], 0, "{first}");
    remove_images(&[
        first["image"].as_str().unwrap(),
        second["image"].as_str().unwrap(),
    ]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn build_args_reach_run_steps_and_are_echoed_in_the_options() {
    let node = start_node(|_| {}).await;
    let app = unique("buildarg");
    let df = dockerfile(&format!(
        "ARG WORD=plain\nRUN echo \"word=$WORD\" # {app}\n"
    ));
    let id = node
        .submit_ok(
            &format!("app={app}&build_arg=WORD%3Dsesame"),
            tgz(&[("Dockerfile", &df)]),
        )
        .await;
    let log = node.log_text(&id).await;
    let build = node.build(&id).await;
    assert_eq!(build["status"], "succeeded");
    assert_eq!(build["options"]["build_args"]["WORD"], "sesame");
    assert!(log.contains("\nword=sesame\n"), "{log}");
    remove_images(&[build["image"].as_str().unwrap()]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_stops_at_the_named_stage() {
    let node = start_node(|_| {}).await;
    let app = unique("target");
    let base = testbed().base_image;
    let df = format!(
        "FROM {base} AS first\nRUN echo in-first-stage # {app}\nFROM {base} AS second\nRUN echo in-second-stage # {app}\n"
    );
    let id = node
        .submit_ok(
            &format!("app={app}&target=first"),
            tgz(&[("Dockerfile", &df)]),
        )
        .await;
    let log = node.log_text(&id).await;
    let build = node.build(&id).await;
    assert_eq!(build["status"], "succeeded", "{log}");
    assert_eq!(build["options"]["target"], "first");
    assert!(log.contains("\nin-first-stage\n"), "{log}");
    assert!(!log.contains("in-second-stage"), "{log}");
    remove_images(&[build["image"].as_str().unwrap()]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_elsewhere_in_the_context_is_used_when_named() {
    let node = start_node(|_| {}).await;
    let app = unique("dockerfile");
    let df = dockerfile(&format!("RUN echo from-the-prod-dockerfile # {app}\n"));
    let id = node
        .submit_ok(
            &format!("app={app}&dockerfile=docker/Dockerfile.prod"),
            tgz(&[("docker/Dockerfile.prod", &df)]),
        )
        .await;
    let log = node.log_text(&id).await;
    let build = node.build(&id).await;
    assert_eq!(build["status"], "succeeded", "{log}");
    assert!(log.contains("\nfrom-the-prod-dockerfile\n"), "{log}");
    remove_images(&[build["image"].as_str().unwrap()]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_run_step_fails_the_build_naming_the_step_and_keeps_the_output() {
    let node = start_node(|_| {}).await;
    let app = unique("failing");
    let df = dockerfile(&format!(
        "RUN echo before-the-failure && exit 3 # {app}\nRUN echo never-reached\n"
    ));
    let id = node
        .submit_ok(&format!("app={app}"), tgz(&[("Dockerfile", &df)]))
        .await;
    let log = node.log_text(&id).await;
    let build = node.build(&id).await;

    assert_eq!(build["status"], "failed", "{build}");
    let error = build["error"].as_str().unwrap();
    assert!(error.contains("step 2/4"), "{error}");
    assert!(
        error.contains("RUN echo before-the-failure && exit 3"),
        "{error}"
    );
    assert!(error.contains("returned a non-zero code: 3"), "{error}");
    assert_eq!(build["image"], serde_json::Value::Null);
    assert!(log.contains("\nbefore-the-failure\n"), "{log}");
    assert!(!log.contains("\nnever-reached\n"), "{log}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_build_and_its_container() {
    let node = start_node(|_| {}).await;
    let app = unique("cancel");
    let marker = unique("sleeper");
    let df = dockerfile(&format!(
        "RUN echo started-{marker} && sleep 300 # {marker}\n"
    ));
    let id = node
        .submit_ok(&format!("app={app}"), tgz(&[("Dockerfile", &df)]))
        .await;

    // Follow the log until the RUN step is really running.
    let mut stream = node
        .http
        .get(format!("{}/builds/{id}/logs", node.url))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut seen = String::new();
    while !seen.contains(&format!("\nstarted-{marker}")) {
        let chunk = tokio::time::timeout(BUILD_LIMIT, stream.next())
            .await
            .expect("the RUN step starts")
            .expect("log ended before the RUN step started")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        sleeper_running(&marker),
        "the RUN container should be running before cancel"
    );

    let cancelled = node.post(&format!("/builds/{id}/cancel")).await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{}", cancelled.json);
    let build = node.wait_finished(&id, Duration::from_secs(10)).await;
    assert_eq!(build["status"], "cancelled", "{build}");
    assert_eq!(build["error"], "cancelled by request");
    assert!(
        !sleeper_running(&marker),
        "the RUN container is still running after cancel"
    );
    node.stop().await;
}

fn sleeper_running(marker: &str) -> bool {
    let ps = docker(&["ps", "--no-trunc", "--format", "{{.Command}}"]);
    String::from_utf8_lossy(&ps.stdout).contains(marker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_build_is_cancelled_at_once() {
    let node = start_node(|s| s.max_concurrent_builds = 1).await;
    let app = unique("queuecancel");
    let slow = dockerfile(&format!("RUN sleep 30 # {app}\n"));
    let running = node
        .submit_ok(&format!("app={app}"), tgz(&[("Dockerfile", &slow)]))
        .await;
    node.wait_for(&running, BUILD_LIMIT, |b| b["status"] == "running")
        .await;
    let queued = node
        .submit_ok(&format!("app={app}"), tgz(&[("Dockerfile", &slow)]))
        .await;
    assert_eq!(node.build(&queued).await["status"], "queued");

    let answer = node.post(&format!("/builds/{queued}/cancel")).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED);
    assert_eq!(answer.json["status"], "cancelled");
    assert_eq!(answer.json["error"], "cancelled before it started");
    assert_eq!(answer.json["attempt"], 0);

    node.post(&format!("/builds/{running}/cancel")).await;
    node.wait_finished(&running, Duration::from_secs(15)).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_builds_all_complete_with_at_most_the_configured_number_running() {
    let node = start_node(|s| s.max_concurrent_builds = 2).await;
    let app = unique("concurrent");
    let mut ids = Vec::new();
    for i in 0..5 {
        let df = dockerfile(&format!("RUN echo build-{i}-{app} && sleep 1\n"));
        ids.push(
            node.submit_ok(&format!("app={app}"), tgz(&[("Dockerfile", &df)]))
                .await,
        );
    }
    let mut most_running = 0;
    loop {
        let page = node.get(&format!("/builds?app={app}&limit=10")).await.json;
        let statuses: Vec<&str> = page["builds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["status"].as_str().unwrap())
            .collect();
        most_running = most_running.max(statuses.iter().filter(|s| **s == "running").count());
        if statuses.iter().all(|s| *s == "succeeded") {
            assert_eq!(statuses.len(), 5);
            break;
        }
        assert!(
            statuses
                .iter()
                .all(|s| matches!(*s, "queued" | "running" | "succeeded")),
            "{statuses:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        most_running, 2,
        "two builds should have run side by side, never more"
    );
    for id in &ids {
        remove_images(&[&format!("slipway/{app}:{id}")]);
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_followers_see_the_same_complete_log_and_sse_resumes_after_last_event_id() {
    let node = start_node(|_| {}).await;
    let app = unique("followers");
    let df = dockerfile(&format!(
        "RUN for i in 1 2 3 4 5 6 7 8 9 10; do echo line-$i; sleep 0.1; done # {app}\n"
    ));
    let id = node
        .submit_ok(&format!("app={app}"), tgz(&[("Dockerfile", &df)]))
        .await;

    let (first, second) = tokio::join!(node.log_text(&id), node.log_text(&id));
    assert_eq!(first, second);
    let numbered: Vec<&str> = first.lines().filter(|l| l.starts_with("line-")).collect();
    assert_eq!(
        numbered,
        (1..=10).map(|i| format!("line-{i}")).collect::<Vec<_>>()
    );
    let snapshot = node
        .http
        .get(format!("{}/builds/{id}/logs?follow=false", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(snapshot, first);

    let sse = sse_events(&node, &id, None).await;
    let lines: Vec<&(String, String, String)> = sse.iter().filter(|e| e.0.is_empty()).collect();
    assert_eq!(lines.len(), first.lines().count());
    for (i, (_, event_id, data)) in lines.iter().enumerate() {
        assert_eq!(event_id, &i.to_string());
        assert_eq!(data, first.lines().nth(i).unwrap());
    }
    let end = sse.last().unwrap();
    assert_eq!(end.0, "end");
    assert_eq!(end.2, r#"{"status":"succeeded"}"#);

    let resumed = sse_events(&node, &id, Some("4")).await;
    assert_eq!(resumed.first().unwrap().1, "5");
    assert_eq!(resumed.len(), sse.len() - 5);
    remove_images(&[&format!("slipway/{app}:{id}")]);
    node.stop().await;
}

/// (event, id, data) triples of a whole SSE response.
async fn sse_events(
    node: &TestNode,
    id: &str,
    last_event_id: Option<&str>,
) -> Vec<(String, String, String)> {
    let mut request = node
        .http
        .get(format!("{}/builds/{id}/logs", node.url))
        .header("accept", "text/event-stream");
    if let Some(last) = last_event_id {
        request = request.header("last-event-id", last);
    }
    let response = request.send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let mut event = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event.0 = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("id:") {
                    event.1 = v.trim_start().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    event.2 = v.strip_prefix(' ').unwrap_or(v).to_string();
                }
            }
            event
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_upload_with_the_file_first_enqueues_like_a_raw_one() {
    let node = start_node(|_| {}).await;
    let app = unique("multipart");
    let df = dockerfile(&format!("RUN echo via-multipart # {app}\n"));
    let form = reqwest::multipart::Form::new()
        .part(
            "source",
            reqwest::multipart::Part::bytes(tgz(&[("Dockerfile", &df)])).file_name("app.tgz"),
        )
        .text("app", app.clone())
        .text("build_arg", "A=b");
    let response = node
        .http
        .post(format!("{}/builds", node.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let answer = common::node::answer(response).await;
    assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.json);
    assert_eq!(answer.json["app"], app.as_str());
    assert_eq!(answer.json["options"]["build_args"]["A"], "b");
    let id = answer.json["id"].as_str().unwrap();
    let build = node.wait_finished(id, BUILD_LIMIT).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    remove_images(&[build["image"].as_str().unwrap()]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_registry_the_image_is_pushed_and_its_digest_recorded() {
    let bed = testbed();
    let node = start_node(|s| {
        s.registry.url = Some(bed.registry.clone());
        s.registry.username = Some(bed.registry_user.clone());
        s.registry.password = Some(bed.registry_password.clone());
    })
    .await;
    let app = unique("pushed");
    let df = dockerfile(&format!("RUN echo {app} > /pushed\n"));
    let id = node
        .submit_ok(&format!("app={app}"), tgz(&[("Dockerfile", &df)]))
        .await;
    let log = node.log_text(&id).await;
    let build = node.build(&id).await;
    assert_eq!(build["status"], "succeeded", "{build}\n{log}");
    assert_eq!(
        build["image"],
        format!("{}/{app}:{id}", bed.registry).as_str()
    );

    let manifest = node
        .http
        .head(format!("http://{}/v2/{app}/manifests/{id}", bed.registry))
        .basic_auth(&bed.registry_user, Some(&bed.registry_password))
        .header(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), StatusCode::OK);
    let digest = manifest.headers()["docker-content-digest"]
        .to_str()
        .unwrap();
    assert_eq!(build["digest"], digest);
    assert!(
        !log.contains(&bed.registry_password),
        "the registry password leaked into the log"
    );
    remove_images(&[build["image"].as_str().unwrap()]);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_over_build_timeout_fails_with_a_clear_error_and_stops_its_container() {
    let node = start_node(|s| s.build_timeout = Duration::from_secs(2)).await;
    let app = unique("timeout");
    let marker = unique("overrun");
    let df = dockerfile(&format!("RUN sleep 300 # {marker}\n"));
    let id = node
        .submit_ok(&format!("app={app}"), tgz(&[("Dockerfile", &df)]))
        .await;
    let build = node.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["error"], "build timed out after 2s (build_timeout)");
    assert!(
        !sleeper_running(&marker),
        "the RUN container outlived the timeout"
    );
    node.stop().await;
}
