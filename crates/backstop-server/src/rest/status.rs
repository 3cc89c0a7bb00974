//! REST error bodies: the `google.rpc.Status` JSON with the HTTP status
//! code that the public API pairs with each gRPC code.

use base64::Engine as _;
use http::StatusCode;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use tonic::Code;

/// Returns the HTTP status that the Yandex Cloud API pairs with a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status code"),
        Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::BAD_REQUEST,
        Code::Aborted => StatusCode::CONFLICT,
        Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
    }
}

/// Builds the `google.rpc.Status` JSON of `status`. When the status has no
/// `google.rpc.RequestInfo` detail and `request_id` is known, one is added,
/// as the public API's REST errors carry the request id that way.
pub fn status_json(status: &tonic::Status, request_id: Option<&str>) -> serde_json::Value {
    let mut details: Vec<serde_json::Value> = Vec::new();
    if !status.details().is_empty() {
        match backstop_proto::google::rpc::Status::decode(status.details()) {
            Ok(decoded) => details.extend(decoded.details.iter().map(any_json)),
            Err(error) => {
                tracing::warn!(error = %error, "grpc-status-details-bin does not decode as google.rpc.Status; leaving details out")
            }
        }
    }
    let has_request_info = details
        .iter()
        .any(|d| d["@type"] == "type.googleapis.com/google.rpc.RequestInfo");
    if let (false, Some(request_id)) = (has_request_info, request_id) {
        details.push(serde_json::json!({
            "@type": "type.googleapis.com/google.rpc.RequestInfo",
            "requestId": request_id,
        }));
    }
    serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details,
    })
}

/// Writes one `Any` detail as JSON with `@type`. A type that no descriptor
/// covers keeps its bytes as base64 under `value`.
fn any_json(any: &prost_types::Any) -> serde_json::Value {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let descriptor = crate::rest::gateway_pool().get_message_by_name(type_name);
    let fields = descriptor
        .and_then(|descriptor| DynamicMessage::decode(descriptor, any.value.as_slice()).ok())
        .and_then(|message| super::transcode::message_json(&message).ok());
    let mut object = serde_json::Map::new();
    object.insert("@type".into(), any.type_url.clone().into());
    match fields {
        Some(serde_json::Value::Object(fields)) => object.extend(fields),
        _ => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(&any.value);
            object.insert("value".into(), encoded.into());
        }
    }
    serde_json::Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn bad_request_detail_becomes_json() {
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "Request validation error: BackupId: required",
            ErrorDetails::with_bad_request_violation("backup_id", "required"),
        );
        let json = status_json(&status, Some("r1"));
        assert_eq!(json["code"], 3);
        assert_eq!(
            json["message"],
            "Request validation error: BackupId: required"
        );
        let details = json["details"].as_array().unwrap();
        assert_eq!(
            details[0]["@type"],
            "type.googleapis.com/google.rpc.BadRequest"
        );
        assert_eq!(details[0]["fieldViolations"][0]["field"], "backup_id");
        assert_eq!(details[0]["fieldViolations"][0]["description"], "required");
        assert_eq!(
            details[1]["@type"],
            "type.googleapis.com/google.rpc.RequestInfo"
        );
        assert_eq!(details[1]["requestId"], "r1");
    }

    #[test]
    fn status_codes_follow_public_api_table() {
        let table = [
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, expected) in table {
            assert_eq!(http_status(code).as_u16(), expected, "{code:?}");
        }
    }
}
