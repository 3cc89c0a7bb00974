//! The tower layer in front of every gRPC service.
//!
//! For each call it makes a request id and a trace id, opens a tracing span
//! carrying them (so every log line of the call has the request id), checks
//! the bearer token, and adds `x-request-id`, `x-server-request-id` and
//! `x-server-trace-id` to the response, error responses included.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{HeaderValue, Request, Response};
use rand::Rng;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::auth::Authenticator;

/// Path prefixes served without authentication: the SDKs call endpoint
/// discovery without credentials, and health and reflection are operator
/// tools.
const PUBLIC_PATHS: &[&str] = &[
    "/yandex.cloud.endpoint.ApiEndpointService/",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
];

/// Builds [`ApiService`] around each gRPC service.
#[derive(Clone)]
pub struct ApiLayer {
    auth: Arc<Authenticator>,
}

/// See [`ApiLayer`].
#[derive(Clone)]
pub struct ApiService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl ApiLayer {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        ApiLayer { auth }
    }
}

impl<S> Layer<S> for ApiLayer {
    type Service = ApiService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiService {
            inner,
            auth: self.auth.clone(),
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ApiService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // The clone that was polled ready must serve this call; a fresh clone
        // takes its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);

        let request_id = uuid::Uuid::new_v4().to_string();
        let trace_id = new_trace_id();
        let method = request.uri().path().to_owned();
        let client_request_id = header_str(&request, "x-client-request-id").map(str::to_owned);
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            trace_id = %trace_id,
            method = %method,
            client_request_id = client_request_id.as_deref().unwrap_or(""),
        );

        let auth = if PUBLIC_PATHS.iter().any(|prefix| method.starts_with(prefix)) {
            Ok(None)
        } else {
            self.auth
                .authenticate(header_str(&request, "authorization"))
                .map(Some)
        };

        Box::pin(
            async move {
                let started = Instant::now();
                let mut response = match auth {
                    Ok(caller) => {
                        if let Some(caller) = caller {
                            tracing::debug!(subject = %caller.subject, "caller authenticated");
                            request.extensions_mut().insert(caller);
                        }
                        inner.call(request).await?
                    }
                    Err(error) => {
                        tracing::info!(error = %error, "call rejected");
                        tonic::Status::from(error).into_http()
                    }
                };
                let headers = response.headers_mut();
                for (name, value) in [
                    ("x-request-id", &request_id),
                    ("x-server-request-id", &request_id),
                    ("x-server-trace-id", &trace_id),
                ] {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.insert(name, value);
                    }
                }
                tracing::info!(
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "call handled"
                );
                Ok(response)
            }
            .instrument(span),
        )
    }
}

fn header_str<'r, B>(request: &'r Request<B>, name: &str) -> Option<&'r str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Returns a trace id in the `trace:span:parent:flags` form that the public
/// API's servers send.
pub(crate) fn new_trace_id() -> String {
    let mut rng = rand::rng();
    let trace: u64 = rng.random();
    let span: u64 = rng.random();
    format!("{trace:016x}:{span:016x}:{trace:016x}:1")
}
