//! The API's one error type and its one exhaustive mapping to HTTP: a new variant forces a
//! decision about its status code. Bodies are `{"error": {"code": …, "message": …}}`.

use warp::http::StatusCode;
use warp::reply::Response;

use crate::intake::IntakeError;
use crate::logs::LogError;
use crate::model::{BuildId, Status, ValidationError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(#[from] ValidationError),
    #[error("{0}")]
    Intake(#[from] IntakeError),
    #[error(
        "unsupported Content-Type {0:?}: send the .tgz as application/gzip or as the `source` field of multipart/form-data"
    )]
    UnsupportedMediaType(String),
    #[error("the multipart body is invalid: {0}")]
    Multipart(String),
    #[error("the multipart body has no `source` file field")]
    SourceMissing,
    #[error("no build with id {0}")]
    BuildNotFound(BuildId),
    #[error("build {id} is already {status}")]
    BuildFinished { id: BuildId, status: Status },
    #[error("the Last-Event-ID header {0:?} is not a line offset")]
    LastEventId(String),
    #[error("{0}")]
    Store(StoreError),
    #[error("{0}")]
    Log(#[from] LogError),
    #[error(
        "no such route; the API has GET and POST /builds, GET /builds/{{id}}, GET /builds/{{id}}/logs, POST /builds/{{id}}/cancel, GET /healthz and GET /nodes"
    )]
    RouteNotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("the request is invalid: {0}")]
    BadRequest(String),
    #[error("the request body is too large")]
    PayloadTooLarge,
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::BuildNotFound(id),
            StoreError::AlreadyFinished { id, status } => ApiError::BuildFinished { id, status },
            other => ApiError::Store(other),
        }
    }
}

impl ApiError {
    /// Status and stable code of every error the API can answer.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            ApiError::Validation(e) => (S::BAD_REQUEST, e.code()),
            ApiError::Intake(e) => match e {
                IntakeError::SourceTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "source_too_large"),
                IntakeError::EmptyBody => (S::BAD_REQUEST, "empty_body"),
                IntakeError::Archive(a) => (S::BAD_REQUEST, a.code()),
                IntakeError::Body(_) => (S::BAD_REQUEST, "upload_interrupted"),
                IntakeError::Storage(_) => (S::SERVICE_UNAVAILABLE, "source_storage_unavailable"),
                IntakeError::Checker(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
            },
            ApiError::UnsupportedMediaType(_) => {
                (S::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Multipart(_) => (S::BAD_REQUEST, "invalid_multipart"),
            ApiError::SourceMissing => (S::BAD_REQUEST, "source_missing"),
            ApiError::BuildNotFound(_) => (S::NOT_FOUND, "build_not_found"),
            ApiError::BuildFinished { .. } => (S::CONFLICT, "build_finished"),
            ApiError::LastEventId(_) => (S::BAD_REQUEST, "invalid_last_event_id"),
            ApiError::Store(e) => match e {
                StoreError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
                StoreError::AlreadyExists(_)
                | StoreError::NotFound(_)
                | StoreError::AlreadyFinished { .. }
                | StoreError::LeaseLost { .. }
                | StoreError::Corrupt(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
            },
            ApiError::Log(_) => (S::SERVICE_UNAVAILABLE, "log_unavailable"),
            ApiError::RouteNotFound => (S::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::BadRequest(_) => (S::BAD_REQUEST, "bad_request"),
            ApiError::PayloadTooLarge => (S::PAYLOAD_TOO_LARGE, "payload_too_large"),
        }
    }

    pub fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, error = %self, "request failed");
        }
        let body = serde_json::json!({ "error": { "code": code, "message": self.to_string() } });
        let mut response = warp::reply::json(&body).into_response_inner();
        *response.status_mut() = status;
        response
    }
}

/// `warp::Reply::into_response` under a name that does not clash with ours.
trait IntoResponseInner {
    fn into_response_inner(self) -> Response;
}

impl<T: warp::Reply> IntoResponseInner for T {
    fn into_response_inner(self) -> Response {
        warp::Reply::into_response(self)
    }
}
