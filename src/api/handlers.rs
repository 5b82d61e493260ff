//! Request handlers: each turns a parsed request into calls on the store, the source store, the
//! log hub and the agent. No warp filter types in here beyond the reply.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use super::ApiState;
use super::error::ApiError;
use crate::intake::{IntakeError, receive_source};
use crate::logs::LogEvent;
use crate::model::{
    Build, BuildId, BuildRequest, BuildRequestBuilder, SourceInfo, Status, ValidationError,
    parse_flag,
};
use crate::store::ListFilter;

/// Listing page size when the client gives none.
pub const DEFAULT_PAGE_SIZE: usize = 20;
/// Largest page a client may ask for.
pub const MAX_PAGE_SIZE: usize = 200;
/// Largest non-file multipart field (options are short).
const MAX_FORM_FIELD_BYTES: usize = 64 * 1024;

/// `POST /builds` with the archive as the raw body; options in the query string.
pub async fn create_build_raw<S, B>(
    state: Arc<ApiState>,
    query: String,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send,
    B: Buf,
{
    let params = build_params_from_query(&query)?;
    let request = params.finish()?;
    let id = BuildId::new();
    let source = receive(&state, id, body, &request.options.dockerfile).await?;
    enqueue(&state, id, request, source).await
}

/// `POST /builds` as `multipart/form-data`: the `source` file field and option fields in any
/// order. Options after the file are applied when the form ends.
pub async fn create_build_multipart<S, B>(
    state: Arc<ApiState>,
    query: String,
    boundary: String,
    body: S,
) -> Result<Response, ApiError>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send + 'static,
{
    let mut params = build_params_from_query(&query)?;
    let body = body.map(|chunk| chunk.map(|mut b| b.copy_to_bytes(b.remaining())));
    let mut form = multer::Multipart::new(body, boundary);
    let id = BuildId::new();
    let mut received: Option<(SourceInfo, String)> = None;
    let outcome: Result<BuildRequest, ApiError> = async {
        while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
            let name = field.name().unwrap_or_default().to_string();
            if name == "source" {
                if received.is_some() {
                    return Err(ApiError::Multipart("more than one `source` field".into()));
                }
                // The Dockerfile named so far; a later `dockerfile` field is checked below.
                let dockerfile = params.dockerfile().to_string();
                let chunks = futures_util::stream::poll_fn(move |cx| field.poll_next_unpin(cx));
                let info = receive(&state, id, chunks, &dockerfile).await?;
                received = Some((info, dockerfile));
            } else {
                let mut value = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                    value.extend_from_slice(&chunk);
                    if value.len() > MAX_FORM_FIELD_BYTES {
                        return Err(ApiError::Multipart(format!("field `{name}` is too long")));
                    }
                }
                let value = String::from_utf8(value)
                    .map_err(|_| ApiError::Multipart(format!("field `{name}` is not UTF-8")))?;
                params.set(&name, &value)?;
            }
        }
        Ok(std::mem::take(&mut params).finish()?)
    }
    .await;
    let discard = |state: &ApiState| {
        let sources = state.sources.clone();
        async move {
            let _ = sources.delete(id).await;
        }
    };
    let request = match outcome {
        Ok(request) => request,
        Err(e) => {
            if received.is_some() {
                discard(&state).await;
            }
            return Err(e);
        }
    };
    let Some((source, checked_dockerfile)) = received else {
        return Err(ApiError::SourceMissing);
    };
    if checked_dockerfile != request.options.dockerfile
        && let Err(e) = recheck_dockerfile(&state, id, &request.options.dockerfile).await
    {
        discard(&state).await;
        return Err(e);
    }
    enqueue(&state, id, request, source).await
}

/// Build options given in the query string (both upload forms accept them there).
fn build_params_from_query(query: &str) -> Result<BuildRequestBuilder, ValidationError> {
    let mut params = BuildRequestBuilder::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        params.set(&name, &value)?;
    }
    Ok(params)
}

fn multipart_error(e: multer::Error) -> ApiError {
    match e {
        multer::Error::StreamReadFailed(inner) => {
            ApiError::Intake(IntakeError::Body(inner.to_string()))
        }
        other => ApiError::Multipart(other.to_string()),
    }
}

async fn receive<S, B, E>(
    state: &ApiState,
    id: BuildId,
    body: S,
    dockerfile: &str,
) -> Result<SourceInfo, ApiError>
where
    S: Stream<Item = Result<B, E>>,
    B: Buf,
    E: std::fmt::Display,
{
    let limits = &state.settings.limits;
    Ok(receive_source(
        id,
        body,
        state.sources.as_ref(),
        &state.archive_limits,
        limits.max_source_bytes.as_u64(),
        dockerfile,
    )
    .await?)
}

/// The `dockerfile` field came after the file: check the stored archive for it.
async fn recheck_dockerfile(
    state: &ApiState,
    id: BuildId,
    dockerfile: &str,
) -> Result<(), ApiError> {
    let stream = state
        .sources
        .open(id)
        .await
        .map_err(|e| ApiError::Intake(IntakeError::Storage(e)))?;
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let limits = state.archive_limits.clone();
    let dockerfile = dockerfile.to_string();
    tokio::task::spawn_blocking(move || {
        crate::archive::check_archive(reader, &limits, &dockerfile)
    })
    .await
    .map_err(|e| ApiError::Intake(IntakeError::Checker(e.to_string())))?
    .map_err(|e| ApiError::Intake(IntakeError::Archive(e)))?;
    Ok(())
}

/// Enqueue: the source is stored; write the queued row (or remove the source if that fails),
/// then wake the agent so the build starts now.
async fn enqueue(
    state: &ApiState,
    id: BuildId,
    request: BuildRequest,
    source: SourceInfo,
) -> Result<Response, ApiError> {
    let build = Build::new_queued(id, request, source);
    if let Err(e) = state.store.create(&build).await {
        let _ = state.sources.delete(id).await;
        return Err(e.into());
    }
    state.agent.wake();
    tracing::info!(build = %id, app = %build.app, bytes = build.source.bytes, "build queued");
    let mut response = json(StatusCode::ACCEPTED, &build);
    if let Ok(location) = HeaderValue::from_str(&format!("/builds/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

#[derive(Serialize)]
struct BuildPage {
    builds: Vec<Build>,
    next: Option<BuildId>,
}

/// `GET /builds?app=&status=&limit=&before=`
pub async fn list_builds(state: Arc<ApiState>, query: String) -> Result<Response, ApiError> {
    let mut filter = ListFilter {
        limit: DEFAULT_PAGE_SIZE,
        ..ListFilter::default()
    };
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "app" => filter.app = Some(value.parse()?),
            "status" => filter.status = Some(value.parse()?),
            "before" => filter.before = Some(value.parse()?),
            "limit" => {
                filter.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                    .ok_or_else(|| ValidationError::Parameter {
                        name: "limit",
                        value: value.to_string(),
                        reason: "expected a number from 1 to 200",
                    })?
            }
            other => {
                return Err(
                    ValidationError::UnknownParameter(other.chars().take(100).collect()).into(),
                );
            }
        }
    }
    // One extra row tells whether another page exists.
    let wanted = filter.limit;
    filter.limit += 1;
    let mut builds = state.store.list(&filter).await?;
    let next = if builds.len() > wanted {
        builds.truncate(wanted);
        builds.last().map(|b| b.id)
    } else {
        None
    };
    Ok(json(StatusCode::OK, &BuildPage { builds, next }))
}

/// `GET /builds/{id}`
pub async fn get_build(state: Arc<ApiState>, id: String) -> Result<Response, ApiError> {
    let id: BuildId = id.parse()?;
    let build = state
        .store
        .get(id)
        .await?
        .ok_or(ApiError::BuildNotFound(id))?;
    Ok(json(StatusCode::OK, &build))
}

/// `POST /builds/{id}/cancel`: a queued build ends at once; a running one is stopped by its
/// owner (here, directly).
pub async fn cancel_build(state: Arc<ApiState>, id: String) -> Result<Response, ApiError> {
    let id: BuildId = id.parse()?;
    let build = state.store.request_cancel(id).await?;
    if build.status == Status::Running {
        state.agent.cancel_running(id);
    }
    Ok(json(StatusCode::ACCEPTED, &build))
}

/// How the client wants the log.
pub struct LogRequest {
    pub id: String,
    pub query: String,
    pub accept: Option<String>,
    pub last_event_id: Option<String>,
}

/// `GET /builds/{id}/logs`: text/plain (history, then live lines until the end) or, with
/// `Accept: text/event-stream`, SSE with the line offset as event id.
pub async fn build_logs(state: Arc<ApiState>, request: LogRequest) -> Result<Response, ApiError> {
    let id: BuildId = request.id.parse()?;
    let mut follow = true;
    for (name, value) in form_urlencoded::parse(request.query.as_bytes()) {
        match &*name {
            "follow" => follow = parse_flag("follow", &value)?,
            other => {
                return Err(
                    ValidationError::UnknownParameter(other.chars().take(100).collect()).into(),
                );
            }
        }
    }
    if state.store.get(id).await?.is_none() {
        return Err(ApiError::BuildNotFound(id));
    }
    let sse = request
        .accept
        .as_deref()
        .is_some_and(|a| a.contains("text/event-stream"));
    let from = match request.last_event_id.as_deref().filter(|_| sse) {
        None => 0,
        Some(last) => last
            .trim()
            .parse::<u64>()
            .map(|n| n + 1)
            .map_err(|_| ApiError::LastEventId(last.chars().take(100).collect()))?,
    };
    let events = state.logs.follow(state.store.clone(), id, from, follow);
    let format = if sse {
        LogFormat::EventStream
    } else {
        LogFormat::Text
    };
    Ok(log_response(events, format))
}

/// How a log goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    /// `text/plain`: one line per line, nothing else.
    Text,
    /// Server-Sent Events: `id:` is the line offset; a final `end` event carries the status.
    EventStream,
}

/// An SSE comment sent while a build is quiet, so proxies keep the connection open.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

impl LogFormat {
    fn content_type(self) -> &'static str {
        match self {
            LogFormat::Text => "text/plain; charset=utf-8",
            LogFormat::EventStream => "text/event-stream",
        }
    }

    fn render(self, event: &LogEvent) -> Option<Bytes> {
        let text = match (self, event) {
            (LogFormat::Text, LogEvent::Line(line)) => format!("{}\n", line.text),
            (LogFormat::Text, LogEvent::End(_)) => return None,
            // `data: ` with its space: clients drop one space after the colon, so a line's own
            // leading spaces survive. A bare CR would end the SSE line; drop it like a terminal.
            (LogFormat::EventStream, LogEvent::Line(line)) => format!(
                "id: {}\ndata: {}\n\n",
                line.offset,
                line.text.replace('\r', "")
            ),
            (LogFormat::EventStream, LogEvent::End(status)) => format!(
                "event: end\ndata: {}\n\n",
                serde_json::json!({ "status": status })
            ),
        };
        Some(Bytes::from(text))
    }
}

fn log_response(
    events: impl Stream<Item = Result<LogEvent, crate::logs::LogError>> + Send + 'static,
    format: LogFormat,
) -> Response {
    let rendered = events
        .take_while(|event| std::future::ready(event.is_ok()))
        .filter_map(move |event| std::future::ready(event.ok().and_then(|e| format.render(&e))))
        .map(Some)
        .chain(futures_util::stream::once(std::future::ready(None)));
    let body = match format {
        LogFormat::Text => rendered.boxed(),
        LogFormat::EventStream => {
            let keep_alive = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(SSE_KEEP_ALIVE).await;
                Some((Some(Bytes::from_static(b": keep-alive\n\n")), ()))
            });
            futures_util::stream::select(rendered, keep_alive).boxed()
        }
    };
    // `None` marks the end of the log (the keep-alive stream never ends by itself).
    let body = body
        .take_while(|chunk| std::future::ready(chunk.is_some()))
        .filter_map(|chunk| std::future::ready(chunk.map(Ok::<_, Infallible>)));
    let mut response = Response::new(warp::hyper::Body::wrap_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /healthz`: 200 when Docker and the store answer, 503 otherwise.
pub async fn healthz(state: Arc<ApiState>) -> Result<Response, ApiError> {
    let (docker, store) = tokio::join!(state.docker.ping(), state.store.ping());
    let docker = docker
        .map(|_| "ok".to_string())
        .unwrap_or_else(|e| e.to_string());
    let store = store
        .map(|_| "ok".to_string())
        .unwrap_or_else(|e| e.to_string());
    let healthy = docker == "ok" && store == "ok";
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "node": state.node,
        "version": env!("CARGO_PKG_VERSION"),
        "docker": docker,
        "store": store,
        "running_builds": state.agent.running_count(),
        "slots": state.settings.max_concurrent_builds,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok(json(status, &body))
}

/// `GET /nodes`: in embedded mode, this node.
pub async fn nodes(state: Arc<ApiState>) -> Result<Response, ApiError> {
    let body = serde_json::json!({ "nodes": [{
        "id": state.node,
        "url": state.settings.advertised_url(),
        "version": env!("CARGO_PKG_VERSION"),
        "slots": state.settings.max_concurrent_builds,
        "running_builds": state.agent.running_count(),
        "heartbeat_at": crate::model::Timestamp::now(),
    }]});
    Ok(json(StatusCode::OK, &body))
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::Reply::into_response(warp::reply::with_status(warp::reply::json(body), status))
}
