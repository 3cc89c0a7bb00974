//! The REST route table, read from the `google.api.http` options of the
//! public services in the descriptor pool.

use backstop_proto::google::api::{http_rule::Pattern, HttpRule};
use http::Method;
use prost_reflect::{DescriptorPool, MethodDescriptor, Value};

/// Services whose annotated methods become REST routes.
pub const REST_SERVICES: &[&str] = &[
    "yandex.cloud.backup.v1.BackupService",
    "yandex.cloud.backup.v1.PolicyService",
    "yandex.cloud.backup.v1.ResourceService",
    "yandex.cloud.backup.v1.ProviderService",
    "yandex.cloud.operation.OperationService",
];

/// Bindings served on top of the annotations: the public API serves
/// `OperationService.Cancel` on POST as well, although its proto lists
/// only GET.
const EXTRA_BINDINGS: &[(&str, &str, &str)] = &[(
    "yandex.cloud.operation.OperationService.Cancel",
    "POST",
    "/operations/{operation_id}:cancel",
)];

/// One HTTP binding of a gRPC method.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: MethodDescriptor,
    pub http_method: Method,
    /// The path template as the annotation spells it.
    pub template: String,
    segments: Vec<Segment>,
    /// The `:verb` suffix of the last segment, without the colon.
    verb: Option<String>,
    /// `None`: no body; `Some("*")`: the whole request message; otherwise
    /// the name of the request field that the body fills.
    pub body: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Literal(String),
    /// A `{field.path}` variable matching one path segment.
    Variable(String),
}

/// A route that matched a request path, with the path variables it bound
/// (percent-decoded).
pub struct Matched<'r> {
    pub route: &'r Route,
    pub variables: Vec<(String, String)>,
}

/// The result of looking up a request.
pub enum Lookup<'r> {
    Found(Matched<'r>),
    /// The path is known but not with this HTTP method; carries the
    /// methods it accepts.
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

/// Every REST route of [`REST_SERVICES`].
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table from the annotations in `pool`.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, String> {
        let extension = pool
            .get_extension_by_name("google.api.http")
            .ok_or("the descriptor pool has no google.api.http extension")?;
        let mut routes = Vec::new();
        for service_name in REST_SERVICES {
            let service = pool
                .get_service_by_name(service_name)
                .ok_or_else(|| format!("service {service_name} missing from the descriptors"))?;
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                if method.is_client_streaming() || method.is_server_streaming() {
                    return Err(format!(
                        "{} is a streaming method, which the REST gateway does not transcode",
                        method.full_name()
                    ));
                }
                let Value::Message(rule) = options.get_extension(&extension).into_owned() else {
                    return Err(format!(
                        "{}: google.api.http is not a message",
                        method.full_name()
                    ));
                };
                let rule: HttpRule = rule
                    .transcode_to()
                    .map_err(|e| format!("{}: invalid google.api.http: {e}", method.full_name()))?;
                add_rule(&mut routes, &method, &rule)?;
                for binding in &rule.additional_bindings {
                    add_rule(&mut routes, &method, binding)?;
                }
            }
        }
        for (method_name, http_method, template) in EXTRA_BINDINGS {
            let (service_name, short_name) = method_name.rsplit_once('.').unwrap_or_default();
            let method = pool
                .get_service_by_name(service_name)
                .and_then(|s| s.methods().find(|m| m.name() == short_name))
                .ok_or_else(|| format!("method {method_name} missing from the descriptors"))?;
            let http_method =
                Method::from_bytes(http_method.as_bytes()).map_err(|e| e.to_string())?;
            routes.push(Route::new(method, http_method, template, None)?);
        }
        // A route with a verb comes first, so that `/operations/x:cancel`
        // reaches Cancel rather than Get with the id `x:cancel`.
        routes.sort_by_key(|route| route.verb.is_none());
        Ok(RouteTable { routes })
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Finds the route for `method` and `path` (the raw, still
    /// percent-encoded path of the request URI).
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            let Some(variables) = route.match_path(path) else {
                continue;
            };
            // HEAD is served as GET without a body, as HTTP servers do.
            if route.http_method == *method
                || (*method == Method::HEAD && route.http_method == Method::GET)
            {
                return Lookup::Found(Matched { route, variables });
            }
            if !allowed.contains(&route.http_method) {
                allowed.push(route.http_method.clone());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

fn add_rule(
    routes: &mut Vec<Route>,
    method: &MethodDescriptor,
    rule: &HttpRule,
) -> Result<(), String> {
    let (http_method, template) = match &rule.pattern {
        Some(Pattern::Get(path)) => (Method::GET, path),
        Some(Pattern::Post(path)) => (Method::POST, path),
        Some(Pattern::Put(path)) => (Method::PUT, path),
        Some(Pattern::Patch(path)) => (Method::PATCH, path),
        Some(Pattern::Delete(path)) => (Method::DELETE, path),
        Some(Pattern::Custom(custom)) => (
            Method::from_bytes(custom.kind.as_bytes())
                .map_err(|e| format!("{}: invalid custom HTTP method: {e}", method.full_name()))?,
            &custom.path,
        ),
        None => {
            return Err(format!(
                "{}: google.api.http has no path",
                method.full_name()
            ))
        }
    };
    let body = (!rule.body.is_empty()).then(|| rule.body.clone());
    if !rule.response_body.is_empty() {
        return Err(format!(
            "{}: response_body is not supported by the REST gateway",
            method.full_name()
        ));
    }
    routes.push(Route::new(method.clone(), http_method, template, body)?);
    Ok(())
}

impl Route {
    fn new(
        method: MethodDescriptor,
        http_method: Method,
        template: &str,
        body: Option<String>,
    ) -> Result<Self, String> {
        let context = || format!("{}: path template {template:?}", method.full_name());
        let path = template
            .strip_prefix('/')
            .ok_or_else(|| format!("{}: does not start with '/'", context()))?;
        let (path, verb) = split_verb(path);
        let mut segments = Vec::new();
        for segment in path.split('/') {
            if let Some(inner) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                // `{name=*}` is the long form of `{name}`; wider patterns such
                // as `{name=a/*/b/**}` do not occur in the public API.
                let name = match inner.split_once('=') {
                    Some((name, "*")) => name,
                    Some(_) => {
                        return Err(format!(
                            "{}: only `{{field}}` variables are supported",
                            context()
                        ))
                    }
                    None => inner,
                };
                segments.push(Segment::Variable(name.to_owned()));
            } else if segment.contains(['{', '}', '*']) {
                return Err(format!("{}: unsupported segment {segment:?}", context()));
            } else {
                segments.push(Segment::Literal(segment.to_owned()));
            }
        }
        Ok(Route {
            method,
            http_method,
            template: template.to_owned(),
            segments,
            verb: verb.map(str::to_owned),
            body,
        })
    }

    /// Names of the path variables in template order.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Variable(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// The gRPC path of the method: `/package.Service/Method`.
    pub fn grpc_path(&self) -> String {
        format!(
            "/{}/{}",
            self.method.parent_service().full_name(),
            self.method.name()
        )
    }

    fn match_path(&self, path: &str) -> Option<Vec<(String, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut variables = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Variable(_) if part.is_empty() => return None,
                Segment::Variable(name) => {
                    let value = percent_encoding::percent_decode_str(part)
                        .decode_utf8()
                        .ok()?
                        .into_owned();
                    variables.push((name.clone(), value));
                }
            }
        }
        Some(variables)
    }
}

/// Splits `a/{b}:verb` into `a/{b}` and `verb`. A colon inside braces
/// belongs to the variable, not to the verb.
fn split_verb(path: &str) -> (&str, Option<&str>) {
    let last_segment_start = path.rfind('/').map_or(0, |i| i + 1);
    let last = &path[last_segment_start..];
    let search_from = last.rfind('}').map_or(0, |i| i + 1);
    match last[search_from..].find(':') {
        Some(offset) => {
            let colon = last_segment_start + search_from + offset;
            (&path[..colon], Some(&path[colon + 1..]))
        }
        None => (path, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::from_pool(crate::rest::gateway_pool()).expect("route table")
    }

    fn found(table: &RouteTable, method: Method, path: &str) -> (String, Vec<(String, String)>) {
        match table.lookup(&method, path) {
            Lookup::Found(matched) => (
                matched.route.method.full_name().to_owned(),
                matched.variables,
            ),
            Lookup::MethodNotAllowed(allowed) => {
                panic!("{method} {path}: 405, allowed {allowed:?}")
            }
            Lookup::NotFound => panic!("{method} {path}: not found"),
        }
    }

    #[test]
    fn verb_routes_win_over_plain_variables() {
        let table = table();
        let (method, variables) = found(&table, Method::GET, "/operations/op1:cancel");
        assert_eq!(method, "yandex.cloud.operation.OperationService.Cancel");
        assert_eq!(
            variables,
            vec![("operation_id".to_owned(), "op1".to_owned())]
        );
        let (method, _) = found(&table, Method::POST, "/operations/op1:cancel");
        assert_eq!(method, "yandex.cloud.operation.OperationService.Cancel");
        let (method, variables) = found(&table, Method::GET, "/operations/op1");
        assert_eq!(method, "yandex.cloud.operation.OperationService.Get");
        assert_eq!(
            variables,
            vec![("operation_id".to_owned(), "op1".to_owned())]
        );
    }

    #[test]
    fn path_variables_are_percent_decoded() {
        let (method, variables) =
            found(&table(), Method::DELETE, "/backup/v1/backups/vm%201/b%2F2");
        assert_eq!(method, "yandex.cloud.backup.v1.BackupService.Delete");
        assert_eq!(
            variables,
            vec![
                ("compute_instance_id".to_owned(), "vm 1".to_owned()),
                ("backup_id".to_owned(), "b/2".to_owned())
            ]
        );
    }

    #[test]
    fn wrong_method_lists_allowed_methods() {
        match table().lookup(&Method::PUT, "/backup/v1/policies/p1") {
            Lookup::MethodNotAllowed(allowed) => {
                assert!(allowed.contains(&Method::GET));
                assert!(allowed.contains(&Method::PATCH));
                assert!(allowed.contains(&Method::DELETE));
            }
            _ => panic!("expected 405"),
        }
    }

    #[test]
    fn unknown_paths_are_not_found() {
        let table = table();
        for path in [
            "/",
            "/backup/v1",
            "/backup/v1/policies/p1/extra",
            "/backup/v1/backups//files",
        ] {
            assert!(
                matches!(table.lookup(&Method::GET, path), Lookup::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn every_annotated_method_has_a_route() {
        let table = table();
        let pool = crate::rest::gateway_pool();
        let extension = pool.get_extension_by_name("google.api.http").unwrap();
        for service in REST_SERVICES {
            for method in pool.get_service_by_name(service).unwrap().methods() {
                let annotated = method.options().has_extension(&extension);
                let routed = table.routes().iter().any(|r| r.method == method);
                assert_eq!(annotated, routed, "{}", method.full_name());
            }
        }
    }

    #[test]
    fn verb_split_ignores_colons_in_variables() {
        assert_eq!(split_verb("a/{b}:run"), ("a/{b}", Some("run")));
        assert_eq!(split_verb("a/{b}"), ("a/{b}", None));
        assert_eq!(split_verb("a:b/c"), ("a:b/c", None));
    }
}
