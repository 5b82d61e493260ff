//! Every bad input gets a JSON error with a specific code and a fitting 4xx, and leaves nothing
//! behind: no queued row, no stored source.

mod common;

use common::node::{Answer, TestNode, start_node};
use common::{testbed, tgz, unique};
use reqwest::StatusCode;

fn valid_dockerfile() -> String {
    format!("FROM {}\nRUN true\n", testbed().base_image)
}

/// A tar entry written with raw header bytes, so the test can say things `tar::Builder`
/// refuses to write (`..`, absolute paths, links out of the context).
struct Raw<'a> {
    name: &'a str,
    kind: tar::EntryType,
    link: &'a str,
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a str) -> Raw<'a> {
    Raw {
        name,
        kind: tar::EntryType::Regular,
        link: "",
        data: data.as_bytes(),
    }
}

fn raw_tgz(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut tar = Vec::new();
    for e in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        header.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        header.set_entry_type(e.kind);
        header.set_mode(0o644);
        header.set_size(e.data.len() as u64);
        header.set_cksum();
        tar.extend_from_slice(header.as_bytes());
        tar.extend_from_slice(e.data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    }
    tar.resize(tar.len() + 1024, 0);
    gzip(&tar)
}

/// Letters from a xorshift generator: gzip cannot shrink them much.
fn incompressible_text(len: usize) -> String {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Asserts the rejection and that it left nothing behind.
async fn assert_rejected(
    node: &TestNode,
    answer: Answer,
    status: StatusCode,
    code: &str,
    message_names: &str,
) {
    assert_eq!(answer.status, status, "{}", answer.json);
    assert_eq!(answer.error_code(), code, "{}", answer.json);
    assert!(
        answer.error_message().contains(message_names),
        "message {:?} should name {message_names:?}",
        answer.error_message()
    );
    let listed = node.get("/builds").await.json;
    assert_eq!(
        listed["builds"],
        serde_json::json!([]),
        "a rejected upload left a build row"
    );
    assert_eq!(
        node.stored_sources(),
        Vec::<String>::new(),
        "a rejected upload left a source file"
    );
}

async fn submit_archive(node: &TestNode, body: Vec<u8>) -> Answer {
    node.submit(&format!("app={}", unique("bad")), body).await
}

/// Starts a node configured by `configure`, uploads `body` for a valid app, and asserts the
/// rejection and that nothing was left behind.
async fn expect_rejection(
    configure: impl FnOnce(&mut slipway::config::Settings),
    body: Vec<u8>,
    status: StatusCode,
    code: &str,
    message_names: &str,
) {
    let node = start_node(configure).await;
    let answer = submit_archive(&node, body).await;
    assert_rejected(&node, answer, status, code, message_names).await;
    node.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_gzip_is_rejected() {
    expect_rejection(
        |_| {},
        b"just some text".to_vec(),
        StatusCode::BAD_REQUEST,
        "not_gzip",
        "gzip",
    )
    .await;
}

#[tokio::test]
async fn gzip_that_is_not_a_tar_is_rejected() {
    expect_rejection(
        |_| {},
        gzip(&[7u8; 2000]),
        StatusCode::BAD_REQUEST,
        "not_tar",
        "tar",
    )
    .await;
}

#[tokio::test]
async fn an_empty_body_is_rejected() {
    expect_rejection(
        |_| {},
        Vec::new(),
        StatusCode::BAD_REQUEST,
        "empty_body",
        "empty",
    )
    .await;
}

#[tokio::test]
async fn a_path_with_parent_components_is_rejected() {
    let df = valid_dockerfile();
    let body = raw_tgz(&[file("Dockerfile", &df), file("../etc/passwd", "x")]);
    expect_rejection(
        |_| {},
        body,
        StatusCode::BAD_REQUEST,
        "path_escapes",
        "../etc/passwd",
    )
    .await;
}

#[tokio::test]
async fn an_absolute_path_is_rejected() {
    let df = valid_dockerfile();
    let body = raw_tgz(&[file("Dockerfile", &df), file("/etc/cron.d/x", "x")]);
    expect_rejection(
        |_| {},
        body,
        StatusCode::BAD_REQUEST,
        "path_escapes",
        "/etc/cron.d/x",
    )
    .await;
}

#[tokio::test]
async fn a_symlink_pointing_outside_the_context_is_rejected() {
    let df = valid_dockerfile();
    let body = raw_tgz(&[
        file("Dockerfile", &df),
        Raw {
            name: "sub/escape",
            kind: tar::EntryType::Symlink,
            link: "../../outside",
            data: b"",
        },
    ]);
    expect_rejection(
        |_| {},
        body,
        StatusCode::BAD_REQUEST,
        "link_escapes",
        "sub/escape",
    )
    .await;
}

#[tokio::test]
async fn a_hard_link_pointing_outside_the_context_is_rejected() {
    let df = valid_dockerfile();
    let body = raw_tgz(&[
        file("Dockerfile", &df),
        Raw {
            name: "shadow",
            kind: tar::EntryType::Link,
            link: "/etc/shadow",
            data: b"",
        },
    ]);
    expect_rejection(
        |_| {},
        body,
        StatusCode::BAD_REQUEST,
        "link_escapes",
        "shadow",
    )
    .await;
}

#[tokio::test]
async fn a_device_node_is_rejected() {
    let df = valid_dockerfile();
    let body = raw_tgz(&[
        file("Dockerfile", &df),
        Raw {
            name: "disk",
            kind: tar::EntryType::Block,
            link: "",
            data: b"",
        },
    ]);
    expect_rejection(
        |_| {},
        body,
        StatusCode::BAD_REQUEST,
        "unsupported_entry",
        "disk",
    )
    .await;
}

#[tokio::test]
async fn an_upload_over_max_source_bytes_is_413() {
    let noise = incompressible_text(20_000);
    let df = valid_dockerfile();
    let body = tgz(&[("Dockerfile", &df), ("noise.txt", &noise)]);
    assert!(body.len() > 1024);
    expect_rejection(
        |s| s.limits.max_source_bytes = bytesize::ByteSize::kib(1),
        body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "source_too_large",
        "1024",
    )
    .await;
}

#[tokio::test]
async fn an_upload_over_max_source_bytes_without_content_length_is_413() {
    let node = start_node(|s| s.limits.max_source_bytes = bytesize::ByteSize::kib(1)).await;
    let noise = incompressible_text(20_000);
    let df = valid_dockerfile();
    let body = tgz(&[("Dockerfile", &df), ("noise.txt", &noise)]);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(512).map(|c| Ok(c.to_vec())).collect();
    let response = node
        .http
        .post(format!("{}/builds?app={}", node.url, unique("chunked")))
        .header("content-type", "application/gzip")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let answer = common::node::answer(response).await;
    assert_rejected(
        &node,
        answer,
        StatusCode::PAYLOAD_TOO_LARGE,
        "source_too_large",
        "max_source_bytes",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn an_archive_that_unpacks_beyond_max_context_bytes_is_rejected() {
    let big = "0".repeat(200 * 1024);
    let df = valid_dockerfile();
    expect_rejection(
        |s| s.limits.max_context_bytes = bytesize::ByteSize::kib(64),
        tgz(&[("Dockerfile", &df), ("zeros", &big)]),
        StatusCode::BAD_REQUEST,
        "context_too_large",
        "65536",
    )
    .await;
}

#[tokio::test]
async fn an_archive_with_more_entries_than_max_entries_is_rejected() {
    let df = valid_dockerfile();
    expect_rejection(
        |s| s.limits.max_entries = 3,
        tgz(&[("Dockerfile", &df), ("a", "a"), ("b", "b"), ("c", "c")]),
        StatusCode::BAD_REQUEST,
        "too_many_entries",
        "3",
    )
    .await;
}

#[tokio::test]
async fn a_missing_app_is_rejected() {
    let node = start_node(|_| {}).await;
    let df = valid_dockerfile();
    let answer = node.submit("", tgz(&[("Dockerfile", &df)])).await;
    assert_rejected(&node, answer, StatusCode::BAD_REQUEST, "app_missing", "app").await;
    node.stop().await;
}

#[tokio::test]
async fn an_invalid_app_name_is_rejected() {
    let node = start_node(|_| {}).await;
    let df = valid_dockerfile();
    let answer = node
        .submit("app=Not_Valid!", tgz(&[("Dockerfile", &df)]))
        .await;
    assert_rejected(
        &node,
        answer,
        StatusCode::BAD_REQUEST,
        "invalid_app",
        "Not_Valid!",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn an_unknown_parameter_is_rejected() {
    let node = start_node(|_| {}).await;
    let df = valid_dockerfile();
    let answer = node
        .submit("app=ok&nocache=1", tgz(&[("Dockerfile", &df)]))
        .await;
    assert_rejected(
        &node,
        answer,
        StatusCode::BAD_REQUEST,
        "unknown_parameter",
        "nocache",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn a_dockerfile_that_is_not_in_the_archive_is_rejected() {
    let node = start_node(|_| {}).await;
    let answer = node
        .submit(
            &format!("app={}&dockerfile=build/Dockerfile", unique("nodf")),
            tgz(&[("Dockerfile", "FROM x\n")]),
        )
        .await;
    assert_rejected(
        &node,
        answer,
        StatusCode::BAD_REQUEST,
        "dockerfile_missing",
        "build/Dockerfile",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn a_dockerfile_field_after_the_multipart_file_is_checked_too() {
    let node = start_node(|_| {}).await;
    let form = reqwest::multipart::Form::new()
        .part(
            "source",
            reqwest::multipart::Part::bytes(tgz(&[("Dockerfile", "FROM x\n")])).file_name("a.tgz"),
        )
        .text("app", unique("late"))
        .text("dockerfile", "other/Dockerfile");
    let response = node
        .http
        .post(format!("{}/builds", node.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let answer = common::node::answer(response).await;
    assert_rejected(
        &node,
        answer,
        StatusCode::BAD_REQUEST,
        "dockerfile_missing",
        "other/Dockerfile",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn a_multipart_form_without_a_source_is_rejected() {
    let node = start_node(|_| {}).await;
    let form = reqwest::multipart::Form::new().text("app", unique("nosource"));
    let response = node
        .http
        .post(format!("{}/builds", node.url))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let answer = common::node::answer(response).await;
    assert_rejected(
        &node,
        answer,
        StatusCode::BAD_REQUEST,
        "source_missing",
        "source",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn an_unsupported_content_type_is_415() {
    let node = start_node(|_| {}).await;
    let response = node
        .http
        .post(format!("{}/builds?app=x", node.url))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    let answer = common::node::answer(response).await;
    assert_rejected(
        &node,
        answer,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "application/json",
    )
    .await;
    node.stop().await;
}

#[tokio::test]
async fn an_unknown_build_id_is_404_everywhere() {
    let node = start_node(|_| {}).await;
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    for answer in [
        node.get(&format!("/builds/{unknown}")).await,
        node.get(&format!("/builds/{unknown}/logs")).await,
        node.post(&format!("/builds/{unknown}/cancel")).await,
    ] {
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.error_code(), "build_not_found");
        assert!(answer.error_message().contains(unknown));
    }
    node.stop().await;
}

#[tokio::test]
async fn a_malformed_build_id_is_400() {
    let node = start_node(|_| {}).await;
    let answer = node.get("/builds/not-a-ulid").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.error_code(), "invalid_id");
    node.stop().await;
}

#[tokio::test]
async fn bad_listing_parameters_are_400() {
    let node = start_node(|_| {}).await;
    for (query, code) in [
        ("limit=0", "invalid_parameter"),
        ("limit=201", "invalid_parameter"),
        ("status=done", "invalid_status"),
        ("app=UPPER", "invalid_app"),
        ("before=xyz", "invalid_id"),
        ("sort=asc", "unknown_parameter"),
    ] {
        let answer = node.get(&format!("/builds?{query}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(answer.error_code(), code, "{query}");
    }
    node.stop().await;
}

#[tokio::test]
async fn an_unknown_route_is_a_json_404() {
    let node = start_node(|_| {}).await;
    let answer = node.get("/nope").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.error_code(), "not_found");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_finished_build_is_409() {
    let node = start_node(|_| {}).await;
    let df = valid_dockerfile();
    let id = node
        .submit_ok(
            &format!("app={}", unique("finished")),
            tgz(&[("Dockerfile", &df)]),
        )
        .await;
    let build = node
        .wait_finished(&id, std::time::Duration::from_secs(120))
        .await;
    assert_eq!(build["status"], "succeeded", "{build}");
    let answer = node.post(&format!("/builds/{id}/cancel")).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.error_code(), "build_finished");
    assert!(answer.error_message().contains("succeeded"));
    common::node::remove_images(&[build["image"].as_str().unwrap()]);
    node.stop().await;
}
