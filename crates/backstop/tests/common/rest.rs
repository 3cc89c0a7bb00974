//! A small REST client for the tests: JSON in, JSON out, over plaintext
//! HTTP/1.1 or HTTP/2, and proto3 JSON of gRPC responses for comparisons.

#![allow(dead_code)]

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

/// One REST response with its body parsed as JSON (`Null` when empty).
#[derive(Debug)]
pub struct RestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: serde_json::Value,
}

/// A client bound to one server address.
pub struct RestClient {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    pub token: Option<String>,
}

impl RestClient {
    /// Returns an HTTP/1.1 client for `address` (host:port).
    pub fn new(address: &str) -> Self {
        RestClient {
            base: format!("http://{address}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
            token: None,
        }
    }

    /// Returns an HTTP/2 client with prior knowledge (h2c) for `address`.
    pub fn http2(address: &str) -> Self {
        RestClient {
            base: format!("http://{address}"),
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub async fn get(&self, path: &str) -> RestResponse {
        self.send(Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> RestResponse {
        self.send(Method::POST, path, Some(body.to_string()), &[])
            .await
    }

    /// Sends a request with an optional raw body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        headers: &[(&str, &str)],
    ) -> RestResponse {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("valid request");
        let response = self.client.request(request).await.expect("REST request");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("read REST body")
            .to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "REST body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        RestResponse {
            status,
            headers,
            json,
        }
    }
}

/// Sends `GET path` over TLS to `address`, offering only `alpn` (`h2` or
/// `http/1.1`) in the handshake, and trusting only the PEM certificate
/// `ca_pem`. Returns the status, the HTTP version used and the JSON body.
pub async fn tls_get(
    address: &str,
    ca_pem: &[u8],
    alpn: &[u8],
    path: &str,
) -> (StatusCode, http::Version, serde_json::Value) {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, ServerName},
    };

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(alpn),
        "the server agreed to another protocol"
    );
    let io = hyper_util::rt::TokioIo::new(tls);

    let response = if alpn == b"h2" {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        let request = Request::get(format!("https://localhost{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(request).await.expect("HTTP/2 request")
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender
            .send_request(request)
            .await
            .expect("HTTP/1.1 request")
    };
    let status = response.status();
    let version = response.version();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("read body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).expect("JSON body");
    (status, version, json)
}

/// Returns the API descriptors plus the well-known types, so that an
/// operation's `google.protobuf.Empty` response serializes.
fn pool() -> &'static DescriptorPool {
    static POOL: std::sync::OnceLock<DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::global();
        pool.decode_file_descriptor_set(backstop_proto::DESCRIPTOR_SET)
            .expect("API descriptors");
        pool
    })
}

/// Writes a gRPC response message as the proto3 JSON that REST returns.
pub fn grpc_json<M: prost::Message>(full_name: &str, message: &M) -> serde_json::Value {
    let descriptor = pool()
        .get_message_by_name(full_name)
        .unwrap_or_else(|| panic!("{full_name} missing from the descriptors"));
    let dynamic =
        DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).expect("decode");
    let mut json = dynamic
        .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
        .expect("serialize");
    // The gateway writes an Empty inside Any as `{"@type": ...}` alone.
    let empty =
        serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Empty", "value": {}});
    if json.get("response") == Some(&empty) {
        json["response"] =
            serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Empty"});
    }
    json
}
