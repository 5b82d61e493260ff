//! The HTTP edge: warp filters that parse requests into handler calls, and one `recover` that
//! turns every rejection into the JSON error shape. Any node answers every route.

mod error;
mod handlers;

pub use error::ApiError;

use std::convert::Infallible;
use std::sync::Arc;

use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::agent::Agent;
use crate::archive::ArchiveLimits;
use crate::config::Settings;
use crate::docker::DockerEngine;
use crate::logs::LogHub;
use crate::sources::SourceStore;
use crate::store::BuildStore;

/// Multipart framing around the archive: field headers and boundaries, generously.
const MULTIPART_OVERHEAD: u64 = 256 * 1024;

/// What the handlers work with.
pub struct ApiState {
    pub node: String,
    pub settings: Arc<Settings>,
    pub archive_limits: ArchiveLimits,
    pub store: Arc<dyn BuildStore>,
    pub sources: Arc<dyn SourceStore>,
    pub logs: LogHub,
    pub agent: Agent,
    pub docker: Arc<DockerEngine>,
}

/// Every route of the API.
pub fn routes(
    state: Arc<ApiState>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let with_state = warp::any().map(move || state.clone());
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();

    let create = warp::path!("builds")
        .and(warp::post())
        .and(with_state.clone())
        .and(query)
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(create_build);
    let list = warp::path!("builds")
        .and(warp::get())
        .and(with_state.clone())
        .and(query)
        .then(handlers::list_builds);
    let get = warp::path!("builds" / String)
        .and(warp::get())
        .and(with_state.clone())
        .then(|id, state| handlers::get_build(state, id));
    let logs = warp::path!("builds" / String / "logs")
        .and(warp::get())
        .and(with_state.clone())
        .and(query)
        .and(warp::header::optional::<String>("accept"))
        .and(warp::header::optional::<String>("last-event-id"))
        .then(|id, state, query, accept, last_event_id| {
            handlers::build_logs(
                state,
                handlers::LogRequest {
                    id,
                    query,
                    accept,
                    last_event_id,
                },
            )
        });
    let cancel = warp::path!("builds" / String / "cancel")
        .and(warp::post())
        .and(with_state.clone())
        .then(|id, state| handlers::cancel_build(state, id));
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(with_state.clone())
        .then(handlers::healthz);
    let nodes = warp::path!("nodes")
        .and(warp::get())
        .and(with_state)
        .then(handlers::nodes);

    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(logs)
        .unify()
        .or(cancel)
        .unify()
        .or(healthz)
        .unify()
        .or(nodes)
        .unify()
        .map(|result: Result<Response, ApiError>| result.unwrap_or_else(ApiError::into_response))
        .recover(recover)
        .unify()
        .with(warp::trace::request())
}

/// `POST /builds`: the raw archive or a multipart form, told apart by Content-Type.
async fn create_build(
    state: Arc<ApiState>,
    query: String,
    content_type: Option<String>,
    content_length: Option<u64>,
    body: impl futures_util::Stream<Item = Result<impl bytes::Buf + Send + 'static, warp::Error>>
    + Send
    + 'static,
) -> Result<Response, ApiError> {
    let max = state.settings.limits.max_source_bytes.as_u64();
    let content_type = content_type.unwrap_or_default();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match media_type.as_str() {
        ""
        | "application/gzip"
        | "application/x-gzip"
        | "application/x-tar"
        | "application/octet-stream"
        | "application/x-compressed-tar" => {
            refuse_declared_oversize(content_length, max, 0)?;
            handlers::create_build_raw(state, query, body).await
        }
        "multipart/form-data" => {
            refuse_declared_oversize(content_length, max, MULTIPART_OVERHEAD)?;
            let boundary = multer::parse_boundary(&content_type)
                .map_err(|e| ApiError::Multipart(e.to_string()))?;
            handlers::create_build_multipart(state, query, boundary, body).await
        }
        _ => Err(ApiError::UnsupportedMediaType(content_type)),
    }
}

/// A body whose declared length already exceeds the limit is refused before it is read
/// (`framing`: bytes of envelope allowed around the archive). Undeclared lengths are counted
/// as they stream in.
fn refuse_declared_oversize(
    content_length: Option<u64>,
    max: u64,
    framing: u64,
) -> Result<(), ApiError> {
    if content_length.is_some_and(|n| n > max.saturating_add(framing)) {
        return Err(crate::intake::IntakeError::SourceTooLarge { limit: max }.into());
    }
    Ok(())
}

/// Rejections (no route matched, a header did not parse, …) as JSON errors.
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::RouteNotFound
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::PayloadTooLarge
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::BadRequest(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::BadRequest(e.to_string())
    } else {
        ApiError::BadRequest(format!("{rejection:?}"))
    };
    Ok(error.into_response())
}
