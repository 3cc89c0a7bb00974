//! The REST gateway: the HTTP/JSON mapping of the public API, served on
//! the gRPC listener.
//!
//! [`GatewayLayer`] sits outside the gRPC service stack. A request whose
//! `content-type` starts with `application/grpc` passes through unchanged.
//! Any other request is matched against the `google.api.http` routes,
//! turned into the gRPC request message, and sent through the same stack
//! in-process (authentication, request ids, validation, idempotency). The
//! gRPC response or status is then written back as proto3 JSON, so REST and
//! gRPC run the same code for every call.

mod openapi;
mod routes;
mod status;
pub(crate) mod tls;
mod transcode;

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use prost::Message as _;
use prost_reflect::DescriptorPool;
use tonic::body::Body;
use tower::{Layer, Service};

use routes::{Lookup, RouteTable};

/// Largest accepted REST request body; the same as tonic's default limit
/// for a decoded gRPC message.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Path of the OpenAPI document that the server serves.
pub const OPENAPI_PATH: &str = "/openapi.json";

/// Request headers that describe the HTTP exchange rather than the call, so
/// they are not copied into gRPC metadata.
const HOP_HEADERS: &[&str] = &[
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "content-type",
    "content-length",
    "accept",
    "accept-encoding",
    "user-agent",
];

/// Response headers copied from the gRPC response onto the REST response.
const FORWARDED_RESPONSE_HEADERS: &[&str] =
    &["x-request-id", "x-server-request-id", "x-server-trace-id"];

/// Returns the descriptors the gateway works with: the public API, the
/// well-known types (an operation's `Any` response may be a
/// `google.protobuf.Empty`, which no API file imports) and
/// `google.rpc.error_details` for error details.
pub(crate) fn gateway_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::global();
        pool.decode_file_descriptor_set(backstop_proto::DESCRIPTOR_SET)
            .expect("the API descriptors agree with the well-known types");
        // tonic-types also ships google.rpc.Status under another file name,
        // so only its error_details file is added.
        let rpc_files =
            prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)
                .expect("tonic-types ships a valid descriptor set");
        for file in rpc_files.file {
            if file.name().ends_with("error_details.proto") {
                pool.add_file_descriptor_proto(file)
                    .expect("the error details descriptors agree with the API descriptors");
            }
        }
        pool
    })
}

/// The route table and the OpenAPI document, built once per server.
struct Gateway {
    routes: RouteTable,
    openapi: Bytes,
}

/// Wraps the gRPC service stack with [`GatewayService`].
#[derive(Clone)]
pub struct GatewayLayer {
    gateway: Arc<Gateway>,
}

impl GatewayLayer {
    /// Builds the routes from the descriptors of the public API.
    pub fn new() -> anyhow::Result<Self> {
        let routes = RouteTable::from_pool(gateway_pool()).map_err(anyhow::Error::msg)?;
        let openapi = openapi::openapi_text(&routes).into();
        Ok(GatewayLayer {
            gateway: Arc::new(Gateway { routes, openapi }),
        })
    }
}

impl<S> Layer<S> for GatewayLayer {
    type Service = GatewayService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GatewayService {
            inner,
            gateway: self.gateway.clone(),
        }
    }
}

/// See [`GatewayLayer`].
#[derive(Clone)]
pub struct GatewayService<S> {
    inner: S,
    gateway: Arc<Gateway>,
}

impl<S> Service<Request<Body>> for GatewayService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display + Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The clone that was polled ready serves this call, as in ApiLayer.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if is_grpc(request.headers()) {
            return Box::pin(inner.call(request));
        }
        let gateway = self.gateway.clone();
        Box::pin(async move { Ok(handle_rest(&gateway, inner, request).await) })
    }
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Serves one REST request: the OpenAPI document or a transcoded call.
async fn handle_rest<S>(gateway: &Gateway, grpc: S, request: Request<Body>) -> Response<Body>
where
    S: Service<Request<Body>, Response = Response<Body>> + Send,
    S::Error: std::fmt::Display,
{
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let head_only = method == Method::HEAD;

    if path == OPENAPI_PATH {
        if method != Method::GET && !head_only {
            return method_not_allowed(&method, &path, &[Method::GET]);
        }
        let body = if head_only {
            Bytes::new()
        } else {
            gateway.openapi.clone()
        };
        return json_response(StatusCode::OK, body);
    }

    let matched = match gateway.routes.lookup(&method, &path) {
        Lookup::Found(matched) => matched,
        Lookup::MethodNotAllowed(allowed) => return method_not_allowed(&method, &path, &allowed),
        Lookup::NotFound => {
            let status = tonic::Status::not_found(format!(
                "no REST method at {method} {path}; {OPENAPI_PATH} lists the paths this server serves"
            ));
            return rejected(&method, &path, &status);
        }
    };
    let route = matched.route;

    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let status = if error.is::<http_body_util::LengthLimitError>() {
                tonic::Status::invalid_argument(format!(
                    "request body is larger than the limit of {MAX_BODY_BYTES} bytes"
                ))
            } else {
                tonic::Status::invalid_argument(format!("cannot read the request body: {error}"))
            };
            return rejected(&method, &path, &status);
        }
    };
    let message =
        match transcode::request_message(route, &matched.variables, parts.uri.query(), &body) {
            Ok(message) => message,
            Err(status) => return rejected(&method, &path, &status),
        };

    let mut grpc_request = Request::new(Body::new(Full::new(transcode::grpc_frame(&message))));
    *grpc_request.method_mut() = Method::POST;
    *grpc_request.version_mut() = http::Version::HTTP_2;
    *grpc_request.uri_mut() = route
        .grpc_path()
        .parse()
        .expect("service and method names form a valid path");
    let headers = grpc_request.headers_mut();
    for (name, value) in &parts.headers {
        if !HOP_HEADERS.contains(&name.as_str()) && !name.as_str().starts_with("grpc-") {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    grpc_request.extensions_mut().extend(parts.extensions);

    let response = match call_grpc(grpc, grpc_request).await {
        Ok(response) => response,
        Err(error) => {
            tracing::error!(error = %error, method = %route.grpc_path(), "in-process gRPC call failed");
            let status = tonic::Status::internal("internal error; see the server log");
            return rejected(&method, &path, &status);
        }
    };
    let (response_parts, response_body) = response.into_parts();
    let collected = match response_body.collect().await {
        Ok(collected) => collected,
        Err(error) => {
            tracing::error!(error = %error, method = %route.grpc_path(), "reading the in-process gRPC response failed");
            let status = tonic::Status::internal("internal error; see the server log");
            return error_response(&status, &response_parts.headers);
        }
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let payload = collected.to_bytes();

    // A call that fails before its handler runs returns its status in the
    // headers (a trailers-only response); a handler's status comes in the
    // trailers.
    let status = tonic::Status::from_header_map(&response_parts.headers)
        .or_else(|| tonic::Status::from_header_map(&trailers));
    if let Some(status) = status.filter(|s| s.code() != tonic::Code::Ok) {
        return error_response(&status, &response_parts.headers);
    }

    let output = route.method.output();
    let json = transcode::grpc_unframe(&output, &payload)
        .map_err(|e| e.to_string())
        .and_then(|message| transcode::message_json(&message).map_err(|e| e.to_string()));
    let mut response = match json {
        Ok(json) => {
            let body = if head_only {
                Bytes::new()
            } else {
                serde_json::to_vec(&json)
                    .expect("a JSON value serializes")
                    .into()
            };
            json_response(StatusCode::OK, body)
        }
        Err(error) => {
            tracing::error!(error = %error, method = %route.grpc_path(), "cannot transcode the gRPC response to JSON");
            let status = tonic::Status::internal("internal error; see the server log");
            return error_response(&status, &response_parts.headers);
        }
    };
    copy_request_ids(&response_parts.headers, response.headers_mut());
    response
}

async fn call_grpc<S>(mut grpc: S, request: Request<Body>) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    std::future::poll_fn(|cx| grpc.poll_ready(cx)).await?;
    grpc.call(request).await
}

fn copy_request_ids(from: &HeaderMap, to: &mut HeaderMap) {
    for name in FORWARDED_RESPONSE_HEADERS {
        if let Some(value) = from.get(*name) {
            to.insert(HeaderName::from_static(name), value.clone());
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Writes `status` as a `google.rpc.Status` body, with the request ids of
/// the gRPC response in `grpc_headers` when the call got that far.
fn error_response(status: &tonic::Status, grpc_headers: &HeaderMap) -> Response<Body> {
    let request_id = grpc_headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    let json = status::status_json(status, request_id);
    let body = serde_json::to_vec(&json).expect("a JSON value serializes");
    let mut response = json_response(status::http_status(status.code()), body.into());
    copy_request_ids(grpc_headers, response.headers_mut());
    response
}

/// Writes the error of a request that the gateway rejects before any gRPC
/// call. It gets its own request and trace ids, logged with the error, as
/// ApiLayer gives every gRPC call.
fn rejected(method: &Method, path: &str, status: &tonic::Status) -> Response<Body> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let trace_id = crate::layer::new_trace_id();
    tracing::info!(
        request_id = %request_id,
        trace_id = %trace_id,
        http_method = %method,
        path = %path,
        code = ?status.code(),
        error = %status.message(),
        "REST request rejected"
    );
    let mut ids = HeaderMap::new();
    for (name, value) in [
        ("x-request-id", &request_id),
        ("x-server-request-id", &request_id),
        ("x-server-trace-id", &trace_id),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            ids.insert(name, value);
        }
    }
    error_response(status, &ids)
}

fn method_not_allowed(method: &Method, path: &str, allowed: &[Method]) -> Response<Body> {
    let names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
    let status = tonic::Status::unimplemented(format!(
        "method {method} is not allowed on {path}; use {}",
        names.join(" or ")
    ));
    let mut response = rejected(method, path, &status);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    if let Ok(value) = HeaderValue::from_str(&names.join(", ")) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}
