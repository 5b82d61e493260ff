//! The HTTP client behind the CLI's client subcommands: one method per API route, answers
//! decoded into the domain types of `model.rs`, server errors kept as their `code` and `message`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde::{Deserialize, Serialize};
use tokio_util::io::ReaderStream;

use crate::model::Build;

/// A server that does not accept a TCP connection in this long is down or unreachable; waiting
/// longer only delays the message that says so.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit for the small JSON calls (status, list, cancel). Uploads and logs have none: they last
/// as long as the archive is big or the build runs.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Keepalive probes notice a node that vanished without closing the log stream.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// What went wrong talking to the server. The message is what the CLI prints.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--server` is not an http(s) URL.
    #[error("server address {server:?} is not an http:// or https:// URL")]
    ServerUrl { server: String },
    /// The CA file could not be read or holds no usable certificate.
    #[error("cannot use CA file {}: {reason}", path.display())]
    CaFile { path: PathBuf, reason: String },
    /// reqwest could not set up its HTTP client (TLS backend).
    #[error("cannot set up the HTTP client: {0}")]
    HttpSetup(#[source] reqwest::Error),
    /// The request did not get an answer: connection refused, DNS, TLS, timeout.
    #[error(
        "cannot reach the slipway server at {server}: {}; point --server or SLIPWAY_SERVER at a running `slipway serve`",
        root_cause(source)
    )]
    Connect {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    /// An answer started but its body broke off (a node restarting mid-stream).
    #[error("the connection to {server} broke: {}", root_cause(source))]
    Stream {
        server: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error status.
    #[error("server refused: {message} ({code})")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// The server answered 2xx with a body that is not what the API promises.
    #[error("cannot understand the server's answer: {0}")]
    Decode(#[source] serde_json::Error),
    /// A local file (the archive to upload) could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClientError {
    /// Whether trying again later may succeed: the server was unreachable, went away mid-answer,
    /// or said a dependency is down.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::Stream { .. } => true,
            ClientError::Server { status, .. } => matches!(status, 502..=504),
            ClientError::ServerUrl { .. }
            | ClientError::CaFile { .. }
            | ClientError::HttpSetup(_)
            | ClientError::Decode(_)
            | ClientError::Io { .. } => false,
        }
    }
}

/// reqwest's own message is "error sending request for url (…)"; the useful part
/// ("Connection refused", "invalid peer certificate") is at the bottom of the chain.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Build options for `POST /builds`, as the user typed them; the server validates them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubmitParams {
    pub app: String,
    pub dockerfile: Option<String>,
    pub target: Option<String>,
    /// `K=V` pairs, sent as repeated `build_arg` parameters.
    pub build_args: Vec<String>,
    pub no_cache: bool,
    pub description: Option<String>,
}

impl SubmitParams {
    fn query_pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![("app", self.app.as_str())];
        if let Some(dockerfile) = &self.dockerfile {
            pairs.push(("dockerfile", dockerfile));
        }
        if let Some(target) = &self.target {
            pairs.push(("target", target));
        }
        for arg in &self.build_args {
            pairs.push(("build_arg", arg));
        }
        if self.no_cache {
            pairs.push(("no_cache", "true"));
        }
        if let Some(description) = &self.description {
            pairs.push(("description", description));
        }
        pairs
    }
}

/// Filters and cursor for `GET /builds`; `None` leaves the server's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    pub app: Option<String>,
    pub status: Option<String>,
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub before: Option<String>,
}

impl ListQuery {
    fn query_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(app) = &self.app {
            pairs.push(("app", app.clone()));
        }
        if let Some(status) = &self.status {
            pairs.push(("status", status.clone()));
        }
        if let Some(limit) = self.limit {
            pairs.push(("limit", limit.to_string()));
        }
        if let Some(before) = &self.before {
            pairs.push(("before", before.clone()));
        }
        pairs
    }
}

/// One page of `GET /builds`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildPage {
    pub builds: Vec<Build>,
    /// Cursor for the next (older) page; `None` on the last page.
    pub next: Option<String>,
}

/// The JSON error shape every route answers with: `{"error": {"code", "message"}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
}

/// A connection to one slipway server. Debug is not derived: the token must never be printed.
pub struct Client {
    http: reqwest::Client,
    /// Routes are appended to this URL's path, so a server behind a path prefix works.
    base: Url,
    /// Sent as `Authorization: Bearer …` on every request.
    token: Option<String>,
}

impl Client {
    pub fn new(
        server: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ClientError> {
        let base = Url::parse(server)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && !url.cannot_be_a_base())
            .ok_or_else(|| ClientError::ServerUrl {
                server: server.to_string(),
            })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(TCP_KEEPALIVE)
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = ca_file {
            for certificate in read_ca_file(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let http = builder.build().map_err(ClientError::HttpSetup)?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    /// POST /builds with the .tgz file streamed as the raw body (Content-Type: application/gzip,
    /// Content-Length set) and options as query params: app, dockerfile, target, build_arg
    /// (repeated K=V), no_cache=true, description.
    pub async fn submit(&self, source: &Path, params: &SubmitParams) -> Result<Build, ClientError> {
        let io_error = |error| ClientError::Io {
            path: source.to_path_buf(),
            source: error,
        };
        let file = tokio::fs::File::open(source).await.map_err(io_error)?;
        let length = file.metadata().await.map_err(io_error)?.len();
        let request = self
            .request(Method::POST, &["builds"])
            .query(&params.query_pairs())
            .header(CONTENT_TYPE, "application/gzip")
            .header(CONTENT_LENGTH, length)
            .body(reqwest::Body::wrap_stream(ReaderStream::new(file)));
        self.json(request).await
    }

    /// GET /builds/{id}
    pub async fn build(&self, id: &str) -> Result<Build, ClientError> {
        let request = self
            .request(Method::GET, &["builds", id])
            .timeout(REQUEST_TIMEOUT);
        self.json(request).await
    }

    /// GET /builds?app=&status=&limit=&before=
    pub async fn builds(&self, query: &ListQuery) -> Result<BuildPage, ClientError> {
        let request = self
            .request(Method::GET, &["builds"])
            .query(&query.query_pairs())
            .timeout(REQUEST_TIMEOUT);
        self.json(request).await
    }

    /// POST /builds/{id}/cancel → the build object
    pub async fn cancel(&self, id: &str) -> Result<Build, ClientError> {
        let request = self
            .request(Method::POST, &["builds", id, "cancel"])
            .timeout(REQUEST_TIMEOUT);
        self.json(request).await
    }

    /// GET /builds/{id}/logs (text/plain, chunked; `?follow=false` when !follow); calls on_line for
    /// each complete line as it arrives (split chunks on '\n', flush the last partial line at the end).
    pub async fn follow_logs(
        &self,
        id: &str,
        follow: bool,
        on_line: &mut dyn FnMut(&str),
    ) -> Result<(), ClientError> {
        let mut request = self
            .request(Method::GET, &["builds", id, "logs"])
            .header(ACCEPT, "text/plain");
        if !follow {
            request = request.query(&[("follow", "false")]);
        }
        let response = self.send(request).await?;
        let mut chunks = response.bytes_stream();
        let mut lines = crate::lines::LineSplitter::default();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|source| self.stream_error(source))?;
            lines.push(&chunk, on_line);
        }
        lines.finish(on_line);
        Ok(())
    }

    fn request(&self, method: Method, segments: &[&str]) -> RequestBuilder {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends the request; an error status becomes `ClientError::Server`.
    async fn send(&self, request: RequestBuilder) -> Result<Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Connect {
                server: self.server(),
                source,
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response
            .bytes()
            .await
            .map_err(|source| self.stream_error(source))?;
        Err(server_error(status, &body))
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, ClientError> {
        let response = self.send(request).await?;
        let body = response
            .bytes()
            .await
            .map_err(|source| self.stream_error(source))?;
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }

    fn stream_error(&self, source: reqwest::Error) -> ClientError {
        ClientError::Stream {
            server: self.server(),
            source,
        }
    }

    /// The server as the user named it, for messages.
    fn server(&self) -> String {
        self.base.as_str().trim_end_matches('/').to_string()
    }
}

fn read_ca_file(path: &Path) -> Result<Vec<reqwest::Certificate>, ClientError> {
    let invalid = |reason: String| ClientError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| invalid(root_cause(&e)))?;
    if certificates.is_empty() {
        return Err(invalid("it holds no PEM certificate".to_string()));
    }
    Ok(certificates)
}

/// Reads the API's JSON error shape; anything else (a proxy's HTML page) keeps the HTTP status.
fn server_error(status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => ClientError::Server {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        },
        Err(_) => ClientError::Server {
            status: status.as_u16(),
            code: format!("http_{}", status.as_u16()),
            message: status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn the_json_error_shape_becomes_a_server_error() {
        let body = br#"{"error":{"code":"invalid_app","message":"app name \"X\" is invalid"}}"#;
        let error = server_error(reqwest::StatusCode::BAD_REQUEST, body);
        assert!(
            matches!(&error, ClientError::Server { status: 400, code, .. } if code == "invalid_app")
        );
        assert_eq!(
            error.to_string(),
            r#"server refused: app name "X" is invalid (invalid_app)"#
        );
    }

    #[test]
    fn a_non_json_error_keeps_the_http_status() {
        let error = server_error(
            reqwest::StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
        );
        assert_eq!(error.to_string(), "server refused: Bad Gateway (http_502)");
        assert!(error.is_transient());
    }

    #[test]
    fn a_server_that_is_not_a_url_is_refused() {
        for bad in ["127.0.0.1:7878", "ftp://host", ""] {
            assert!(
                matches!(
                    Client::new(bad, None, None),
                    Err(ClientError::ServerUrl { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "not a certificate\n").unwrap();
        let error = Client::new("https://localhost", None, Some(file.path()))
            .err()
            .unwrap();
        assert!(matches!(error, ClientError::CaFile { .. }), "{error}");
    }

    #[test]
    fn submit_params_become_query_pairs_in_order() {
        let params = SubmitParams {
            app: "hello".into(),
            dockerfile: Some("docker/Dockerfile".into()),
            target: None,
            build_args: vec!["A=1".into(), "B=x y".into()],
            no_cache: true,
            description: Some("first".into()),
        };
        assert_eq!(
            params.query_pairs(),
            [
                ("app", "hello"),
                ("dockerfile", "docker/Dockerfile"),
                ("build_arg", "A=1"),
                ("build_arg", "B=x y"),
                ("no_cache", "true"),
                ("description", "first"),
            ]
        );
    }

    use super::fake_server::{build_json, chunk, chunked_head, json_response, last_chunk, serve};

    const ID: &str = "01KBN6G4N0C5Q2ZJ4V4K3S9M7A";

    #[tokio::test]
    async fn submit_streams_the_archive_with_its_length_and_options_in_the_query() {
        let (url, server) = serve(vec![vec![json_response(
            "202 Accepted",
            &build_json(ID, "queued"),
        )]])
        .await;
        let archive = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(archive.path(), b"\x1f\x8bgz").unwrap();
        let params = SubmitParams {
            app: "hello".into(),
            build_args: vec!["A=1 2".into()],
            no_cache: true,
            ..SubmitParams::default()
        };
        let client = Client::new(&url, Some("s3cret".into()), None).unwrap();

        let build = client.submit(archive.path(), &params).await.unwrap();

        assert_eq!(build.id.to_string(), ID);
        let seen = server.await.unwrap().remove(0);
        let head = seen.head.to_ascii_lowercase();
        assert!(
            head.starts_with("post /builds?app=hello&build_arg=a%3d1+2&no_cache=true http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("content-type: application/gzip\r\n"),
            "{head}"
        );
        assert!(head.contains("content-length: 4\r\n"), "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert!(
            seen.head.contains("authorization: Bearer s3cret\r\n"),
            "{head}"
        );
        assert_eq!(seen.body, b"\x1f\x8bgz");
    }

    #[tokio::test]
    async fn follow_logs_delivers_lines_split_across_http_chunks() {
        let parts = vec![
            chunked_head(),
            chunk("line 1\nl"),
            chunk("ine 2"),
            chunk("\nline 3"),
            last_chunk(),
        ];
        let (url, server) = serve(vec![parts]).await;
        let client = Client::new(&url, None, None).unwrap();
        let mut lines = Vec::new();

        client
            .follow_logs(ID, false, &mut |line| lines.push(line.to_string()))
            .await
            .unwrap();

        assert_eq!(lines, ["line 1", "line 2", "line 3"]);
        let head = server.await.unwrap().remove(0).head;
        assert!(
            head.starts_with(&format!("GET /builds/{ID}/logs?follow=false HTTP/1.1\r\n")),
            "{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn an_error_answer_is_parsed_into_code_and_message() {
        let body =
            r#"{"error":{"code":"not_found","message":"no build 01KBN6G4N0C5Q2ZJ4V4K3S9M7A"}}"#;
        let (url, _server) = serve(vec![vec![json_response("404 Not Found", body)]]).await;
        let client = Client::new(&url, None, None).unwrap();

        let error = client.build(ID).await.unwrap_err();

        assert!(
            matches!(&error, ClientError::Server { status: 404, code, .. } if code == "not_found")
        );
    }

    #[tokio::test]
    async fn a_list_query_sends_only_the_filters_given() {
        let (url, server) = serve(vec![vec![json_response(
            "200 OK",
            r#"{"builds":[],"next":null}"#,
        )]])
        .await;
        let client = Client::new(&format!("{url}/"), None, None).unwrap();
        let query = ListQuery {
            status: Some("failed".into()),
            limit: Some(5),
            ..ListQuery::default()
        };

        let page = client.builds(&query).await.unwrap();

        assert_eq!(
            page,
            BuildPage {
                builds: vec![],
                next: None
            }
        );
        let head = server.await.unwrap().remove(0).head;
        assert!(
            head.starts_with("GET /builds?status=failed&limit=5 HTTP/1.1\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_named_with_a_hint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let client = Client::new(&url, Some("s3cret".into()), None).unwrap();

        let error = client.build(ID).await.unwrap_err();

        let message = error.to_string();
        assert!(matches!(error, ClientError::Connect { .. }));
        assert!(error.is_transient());
        assert!(
            message.starts_with(&format!("cannot reach the slipway server at {url}: ")),
            "{message}"
        );
        assert!(message.contains("SLIPWAY_SERVER"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
}

/// A scripted HTTP/1.1 server for tests of the client and the CLI: it answers one request per
/// connection, in order, writing each answer in parts with pauses so they arrive as separate chunks.
#[cfg(test)]
pub(crate) mod fake_server {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// What the server saw of one request.
    pub struct Seen {
        /// Request line and headers, as sent.
        pub head: String,
        pub body: Vec<u8>,
    }

    /// Serves `answers.len()` connections; an answer that stops short (no final chunk) makes the
    /// client see a broken stream, because the connection is closed after it.
    pub async fn serve(answers: Vec<Vec<Vec<u8>>>) -> (String, tokio::task::JoinHandle<Vec<Seen>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let mut seen = Vec::new();
            for parts in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                seen.push(read_request(&mut socket).await);
                for part in parts {
                    socket.write_all(&part).await.unwrap();
                    socket.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            seen
        });
        (url, handle)
    }

    async fn read_request(socket: &mut tokio::net::TcpStream) -> Seen {
        let mut received = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "client closed before sending a request");
            received.extend_from_slice(&buf[..n]);
            if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8(received[..head_end].to_vec()).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_string)
            })
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0);
        let mut body = received[head_end..].to_vec();
        while body.len() < length {
            let n = socket.read(&mut buf).await.unwrap();
            body.extend_from_slice(&buf[..n]);
        }
        Seen { head, body }
    }

    pub fn json_response(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// The head of a chunked text/plain answer, as the log route sends it.
    pub fn chunked_head() -> Vec<u8> {
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec()
    }

    /// One HTTP chunk carrying `data`.
    pub fn chunk(data: &str) -> Vec<u8> {
        format!("{:x}\r\n{data}\r\n", data.len()).into_bytes()
    }

    /// The chunk that ends a chunked answer.
    pub fn last_chunk() -> Vec<u8> {
        b"0\r\n\r\n".to_vec()
    }

    /// A build object as the API renders it.
    pub fn build_json(id: &str, status: &str) -> String {
        format!(
            r#"{{"id":"{id}","app":"hello","status":"{status}","created_at":"2025-12-04T21:02:55.123Z",
            "started_at":null,"finished_at":null,"node":null,"attempt":0,
            "source":{{"bytes":5,"sha256":"ab"}},
            "options":{{"dockerfile":"Dockerfile","target":null,"build_args":{{}},"no_cache":false}},
            "description":null,"image":null,"digest":null,"error":null}}"#
        )
    }
}
