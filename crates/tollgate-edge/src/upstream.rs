//! Talking to upstream MCP servers: which headers cross the edge in each direction, and
//! turning transport failures into answers that name the upstream.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::EdgeError;
use crate::settings::{HttpVersion, UpstreamSettings};

/// Agent request headers passed to the upstream, each as a single value (the first): the
/// upstream must see the session the edge decided for, not one of several. `Accept` may
/// list several values and passes whole. Everything else, `Authorization` first of all,
/// stays at the edge.
const FORWARDED_REQUEST_HEADERS: [&str; 6] = [
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
    // Derived by the edge from the message it forwards (`protocol::forwarded_headers`),
    // never the agent's own.
    "mcp-method",
    "mcp-name",
];
/// Upstream response headers passed to the agent.
const FORWARDED_RESPONSE_HEADERS: [&str; 4] = [
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    "cache-control",
];

/// An upstream's HTTP client: plain HTTP, or HTTPS with the upstream's TLS settings.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// A client with its own keep-alive connection pool; `tls` is used for `https://` URLs.
/// `version` picks what TLS offers by ALPN and whether cleartext connections start as
/// HTTP/2 (prior knowledge); an HTTP/2 connection carries every concurrent request.
pub(crate) fn http_client(connect_timeout: Duration, tls: rustls::ClientConfig, version: HttpVersion) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(false);
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let connector = match version {
        HttpVersion::Auto => builder.enable_http1().enable_http2().wrap_connector(connector),
        HttpVersion::Http1 => builder.enable_http1().wrap_connector(connector),
        HttpVersion::Http2 => builder.enable_http2().wrap_connector(connector),
    };
    let mut client = Client::builder(TokioExecutor::new());
    client
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(version == HttpVersion::Http2)
        // A dead HTTP/2 connection would otherwise hold every request sent on it.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .http2_keep_alive_timeout(connect_timeout.max(Duration::from_secs(5)))
        .timer(hyper_util::rt::TokioTimer::new());
    client.build(connector)
}

/// One configured upstream MCP server.
#[derive(Clone)]
pub struct Upstream {
    pub name: String,
    uri: Uri,
    injected: HeaderMap,
    /// `forward_grant`: the caller's grant goes upstream in [`GRANT_HEADER`].
    forward_grant: bool,
    client: HttpClient,
}

/// The header naming the caller's grant, for upstreams with `forward_grant`.
pub const GRANT_HEADER: &str = "tollgate-grant";

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream MCP server \"{name}\" ({url}) is unreachable: {cause}")]
    Unreachable { name: String, url: String, cause: String },
    #[error("upstream MCP server \"{name}\" ({url}) did not answer within {ms} ms")]
    Timeout { name: String, url: String, ms: u128 },
    #[error(
        "upstream MCP server \"{name}\" ({url}): TLS failed: {cause} (the upstream's certificate must be signed \
         by a system root or by [[upstreams]] ca_file, and name the url's host; a server that asks for a client \
         certificate needs client_cert and client_key)"
    )]
    Tls { name: String, url: String, cause: String },
    #[error(
        "upstream MCP server \"{name}\" rejected the edge's credentials (HTTP {status}); check [[upstreams]] headers"
    )]
    Credentials { name: String, status: u16 },
}

impl UpstreamError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Unreachable { .. } => "unreachable",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Tls { .. } => "tls",
            UpstreamError::Credentials { .. } => "credentials",
        }
    }

    /// What the agent is told: the upstream's name and what went wrong, without its
    /// address or the transport's details (those are logged for operators).
    pub fn public_message(&self) -> String {
        match self {
            UpstreamError::Unreachable { name, .. } => format!("upstream MCP server \"{name}\" is unreachable"),
            UpstreamError::Timeout { name, ms, .. } => {
                format!("upstream MCP server \"{name}\" did not answer within {ms} ms")
            }
            UpstreamError::Credentials { name, .. } => {
                format!("upstream MCP server \"{name}\" refused the gateway's credentials")
            }
            UpstreamError::Tls { name, .. } => {
                format!("upstream MCP server \"{name}\" could not be reached securely (TLS handshake failed)")
            }
        }
    }

    /// HTTP status for the agent: 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }
}

impl Upstream {
    /// Checks the settings and builds the upstream's client (reading its TLS files).
    pub fn new(settings: &UpstreamSettings, connect_timeout: Duration) -> Result<Self, EdgeError> {
        let bad = |why: String| EdgeError::Config(format!("upstream \"{}\": {why}", settings.name));
        if settings.name.is_empty()
            || !settings
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(bad(
                "name must be letters, digits, '_', '-' or '.' (it becomes the path /mcp/{name})".into(),
            ));
        }
        if !settings.command.is_empty() {
            return Err(bad(
                "`command` (a stdio server) is run by `tollgate up` only: an edge reaches a stdio server through \
                 a `tollgate stdio-bridge` next to it, named by `url`"
                    .into(),
            ));
        }
        if settings.url.is_empty() {
            return Err(bad("needs a url (or, in tollgate up, a command)".into()));
        }
        let uri: Uri = settings
            .url
            .parse()
            .map_err(|e| bad(format!("invalid url \"{}\": {e}", settings.url)))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(bad(format!(
                    "url \"{}\" must start with http:// or https://",
                    settings.url
                )));
            }
        };
        let identity = match (&settings.client_cert, &settings.client_key) {
            (Some(cert), Some(key)) => Some(tollgate_tls::Identity {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => return Err(bad("set client_cert and client_key together".into())),
        };
        if !https && (settings.ca_file.is_some() || identity.is_some()) {
            return Err(bad("ca_file, client_cert and client_key need an https:// url".into()));
        }
        let tls = tollgate_tls::client_config(settings.ca_file.as_deref(), identity.as_ref(), &[])
            .map_err(|e| bad(e.to_string()))?;
        let mut injected = HeaderMap::new();
        for (name, value) in &settings.headers {
            let name =
                HeaderName::try_from(name.as_str()).map_err(|_| bad(format!("invalid header name \"{name}\"")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| bad(format!("invalid value for header \"{name}\"")))?;
            injected.insert(name, value);
        }
        Ok(Upstream {
            name: settings.name.clone(),
            uri,
            injected,
            forward_grant: settings.forward_grant,
            client: http_client(connect_timeout, tls, settings.http),
        })
    }

    pub fn url(&self) -> String {
        self.uri.to_string()
    }

    /// Sends one request for `grant` and waits (up to `timeout`) for the response head; the
    /// body streams afterwards.
    pub async fn send(
        &self,
        method: Method,
        agent_headers: &HeaderMap,
        grant: &str,
        body: Body,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let post = method == Method::POST;
        let mut request = Request::builder().method(method).uri(self.uri.clone());
        if let Some(headers) = request.headers_mut() {
            for value in agent_headers.get_all(header::ACCEPT) {
                headers.append(header::ACCEPT, value.clone());
            }
            // Routing headers (`Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`) describe a POSTed
            // message and are the edge's own, derived from it (`protocol::forwarded_headers`
            // removed the agent's); a GET or DELETE carries none.
            for name in FORWARDED_REQUEST_HEADERS {
                if !post && matches!(name, "mcp-method" | "mcp-name") {
                    continue;
                }
                if let Some(value) = agent_headers.get(name) {
                    headers.insert(name, value.clone());
                }
            }
            if post {
                for (name, value) in agent_headers {
                    if name.as_str().starts_with("mcp-param-") {
                        headers.insert(name.clone(), value.clone());
                    }
                }
            }
            for (name, value) in &self.injected {
                headers.insert(name, value.clone());
            }
            if self.forward_grant
                && let Ok(value) = HeaderValue::from_str(grant)
            {
                headers.insert(GRANT_HEADER, value);
            }
        }
        let request = request.body(body).map_err(|e| self.unreachable(e.to_string()))?;
        let response = match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => {
                return Err(UpstreamError::Timeout {
                    name: self.name.clone(),
                    url: self.url(),
                    ms: timeout.as_millis(),
                });
            }
            Ok(Err(e)) => {
                let (cause, tls) = describe(&e);
                return Err(if tls {
                    UpstreamError::Tls {
                        name: self.name.clone(),
                        url: self.url(),
                        cause,
                    }
                } else {
                    self.unreachable(cause)
                });
            }
            Ok(Ok(r)) => r,
        };
        if matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(UpstreamError::Credentials {
                name: self.name.clone(),
                status: response.status().as_u16(),
            });
        }
        Ok(response)
    }

    fn unreachable(&self, cause: String) -> UpstreamError {
        UpstreamError::Unreachable {
            name: self.name.clone(),
            url: self.url(),
            cause,
        }
    }
}

/// The innermost cause of a client error ("connection refused"), which is what an operator
/// needs (hyper's outer message is generic), and whether TLS failed.
fn describe(error: &hyper_util::client::legacy::Error) -> (String, bool) {
    let mut cause: &dyn std::error::Error = error;
    let mut tls = false;
    loop {
        tls |= cause.downcast_ref::<rustls::Error>().is_some();
        match cause.source() {
            Some(inner) => cause = inner,
            None => break,
        }
    }
    let text = cause.to_string();
    let tls = tls || text.contains("certificate") || text.contains("TLS");
    (text, tls)
}

/// The response headers an agent may see.
pub fn response_headers(upstream: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for name in FORWARDED_RESPONSE_HEADERS {
        for value in upstream.get_all(name) {
            headers.append(name, value.clone());
        }
    }
    headers
}
