//! The HTTP face of [`ApiError`]: its status code, and answers in the JSON shape
//! `{"error":{"code","message"}}` carrying the code as a response extension (so it is counted).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use crate::service::error::{ApiError, ErrorBody, ErrorCode};

/// The HTTP status of an error answer.
pub fn status(e: &ApiError) -> StatusCode {
    match e {
        ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
        ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
        ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
        ApiError::UnknownAgent(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
        ApiError::FrameTooLarge { .. }
        | ApiError::InputTooLarge { .. }
        | ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ApiError::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
        ApiError::SessionBusy(_) | ApiError::Conflict(_) => StatusCode::CONFLICT,
        ApiError::HistoryTruncated { .. } => StatusCode::GONE,
        ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
        ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: ErrorBody,
        }
        let mut res = (status(&self), axum::Json(Body { error: self.body() })).into_response();
        res.extensions_mut().insert(ErrorCode(self.code()));
        res
    }
}
