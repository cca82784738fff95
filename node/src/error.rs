//! The one place errors become HTTP responses: a status from the code, and
//! a JSON body `{"error": {"code", "message", ...}}` with client-safe text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tidings_protocol::{ErrorCode, ErrorFrame};

#[derive(Debug)]
pub struct ApiError(pub ErrorFrame);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(ErrorFrame::new(code, message))
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::Unauthorized, message)
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    pub fn message(&self) -> &str {
        &self.0.message
    }
}

impl From<ErrorFrame> for ApiError {
    fn from(frame: ErrorFrame) -> ApiError {
        ApiError(frame)
    }
}

/// A service's error, as the client sees it.
impl From<tidings_actors::Error> for ApiError {
    fn from(error: tidings_actors::Error) -> ApiError {
        ApiError(ErrorFrame::from(error))
    }
}

/// A change to the cluster that its metadata group's leader refused.
impl From<tidings_cluster::replication::meta::Refused> for ApiError {
    fn from(refused: tidings_cluster::replication::meta::Refused) -> ApiError {
        use tidings_cluster::replication::meta::Refused;
        let code = match &refused {
            Refused::Unknown(_) => ErrorCode::NotFound,
            Refused::Unavailable(_) => ErrorCode::Unavailable,
            Refused::NameTaken { .. }
            | Refused::Retired { .. }
            | Refused::OtherCluster { .. }
            | Refused::TooFew { .. }
            | Refused::StillUp(_) => ErrorCode::Conflict,
        };
        ApiError::new(code, refused.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> ApiError {
        use axum::extract::rejection::JsonRejection;
        match &rejection {
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                ApiError::new(ErrorCode::TooLarge, "request body is too large")
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::bad_request("expected a JSON body with content-type application/json")
            }
            _ => ApiError::bad_request(rejection.body_text()),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> ApiError {
        ApiError::bad_request(rejection.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(serde_json::json!({ "error": self.0 }))).into_response()
    }
}
