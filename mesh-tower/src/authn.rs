//! End-user authentication: Istio's RequestAuthentication, enforced on inbound requests the
//! way Envoy's `envoy.filters.http.jwt_authn` filter enforces what istiod generates for it.
//!
//! [`Authenticator`] is compiled from a snapshot's
//! [`mesh_core::model::RequestAuthentication`] and run by the
//! authorization layer ([`crate::authz::Authz`]) right before it decides, as Envoy runs
//! `jwt_authn` right before `rbac`: both read the same snapshot, so a workload that no
//! RequestAuthentication selects pays one branch per request and nothing else.
//!
//! What istiod configures, and so what this does (istiod's `convertToEnvoyJwtConfig` in
//! `pilot/pkg/security/authn/v1beta1/policy_applier.go`; Envoy's `verifier.cc`,
//! `authenticator.cc`, `extractor.cc` and `filter.cc`):
//! - One provider per `jwtRules` entry; the requirement is
//!   `any(P1, ..., Pn, all(any(P1, allow_missing), ..., any(Pn, allow_missing)))`. So a request
//!   **without a token passes** (with no request principal: an AuthorizationPolicy with
//!   `requestPrincipals` decides), a request whose token verifies with some rule passes, and a
//!   request with a token that fails is refused, an issuer that no rule names included
//!   (`Jwt issuer is not configured`). Every token found at one rule's locations must verify.
//! - Token locations: the rule's `fromHeaders` (`name: <prefix><token>`), `fromParams` and
//!   `fromCookies`; with none of them, `Authorization: Bearer <token>` and the `access_token`
//!   query parameter.
//! - A refusal is a **response**: `401` (`403` for `Audiences in Jwt are not allowed`, as
//!   Envoy answers) with `jwt_verify_lib`'s status text as the body (`Jwt verification fails`,
//!   `Jwt is expired`, ...) and `www-authenticate: Bearer realm="<url>", error="invalid_token"`.
//! - On success: the token's header is removed unless `forwardOriginalToken` (a token in a query
//!   parameter or a cookie stays, as Envoy leaves it: its `removeJwt` is a TODO there);
//!   `outputPayloadToHeader` gets the payload in base64url; `outputClaimToHeaders` get string,
//!   number and boolean claims. Those output headers are first removed from every request, so
//!   a client cannot send them itself (Envoy's `sanitizePayloadHeaders`).
//! - CORS preflight requests (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are
//!   not authenticated (istiod sets `bypass_cors_preflight`).
//! - The verified [`Claims`] go into the request's extensions, for authorization
//!   (`requestPrincipals`, `request.auth.*`) and for the application behind.
//!
//! Keys from a `jwksUri` come from [`RemoteJwks`], which starts fetching them when the
//! Authenticator is compiled: the authorization layer compiles each snapshot when it is
//! installed (at start and at each reload), so the keys are usually there before the first
//! request, as they are when istiod inlines them. A request whose token needs keys whose first
//! fetch is still under way waits for it ([`Authenticator::pending_keys`]; at most the rule's
//! `timeout`, 5 s when unset), as Envoy's `jwt_authn` pauses a request while the `remote_jwks`
//! fetch it needs is in flight. If that fetch fails or times out (and until one succeeds),
//! tokens of that issuer are refused as Envoy refuses them when istiod could not fetch the keys
//! and inlined its placeholder key (see [`Jwt::verify`]). Refreshes never make a request wait:
//! the last good keys keep serving.
//!
//! ```
//! use mesh_core::{istio, model::Workload};
//! use mesh_tower::authn::{Authenticator, RemoteJwks};
//!
//! let yaml = r#"
//! apiVersion: security.istio.io/v1
//! kind: RequestAuthentication
//! metadata: { name: login }
//! spec:
//!   jwtRules:
//!   - issuer: https://login.example
//!     jwks: '{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'
//! "#;
//! let config = istio::load(&[("ra.yaml", yaml)], &Workload::default()).config.unwrap();
//! let authn = Authenticator::new(&config.request_authentication, &RemoteJwks::default())
//!     .unwrap()
//!     .expect("a rule applies");
//! // No token: passes, without claims.
//! let mut plain = http::Request::get("/").body(()).unwrap();
//! assert!(authn.authenticate(&mut plain, 1_700_000_000).unwrap().is_none());
//! // A token that is not one: refused with Envoy's reason.
//! let mut bad = http::Request::get("/")
//!     .header("authorization", "Bearer a.b.c")
//!     .body(())
//!     .unwrap();
//! let error = authn.authenticate(&mut bad, 1_700_000_000).unwrap_err();
//! assert_eq!(error.to_string(), "Jwt header is an invalid Base64url input or an invalid JSON");
//! ```

use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HOST, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use mesh_core::model::{JwksSource, RequestAuthentication};
use mesh_policy::jwt::{Claims, Jwt, JwtError, KeySet};

use crate::body::{self, BoxBody};

mod remote;
pub use remote::{JWKS_REFRESH_INTERVAL, RemoteJwks, RemoteKeys};

/// Where a token was found, so that it can be removed.
#[derive(Clone, Debug)]
enum Location {
    Header(HeaderName),
    /// Query parameters and cookies stay, as in Envoy.
    Kept,
}

/// One issuer's rule, compiled.
#[derive(Debug)]
struct Provider {
    issuer: String,
    audiences: Vec<String>,
    keys: Keys,
    headers: Vec<(HeaderName, String)>,
    params: Vec<String>,
    cookies: Vec<String>,
    forward: bool,
    payload_header: Option<HeaderName>,
    claim_headers: Vec<(HeaderName, String)>,
}

#[derive(Debug)]
enum Keys {
    Inline(Arc<KeySet>),
    Remote(RemoteKeys),
}

/// A snapshot's RequestAuthentication, ready to authenticate requests.
#[derive(Debug)]
pub struct Authenticator {
    providers: Vec<Provider>,
    /// Output headers of every provider, removed from each request before verification.
    sanitize: Vec<HeaderName>,
}

/// A rule that cannot be compiled: its issuer and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("RequestAuthentication rule for issuer {issuer:?}: {reason}")]
pub struct InvalidRule {
    issuer: String,
    reason: String,
}

fn header_name(name: &str, issuer: &str) -> Result<HeaderName, InvalidRule> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| InvalidRule {
        issuer: issuer.to_owned(),
        reason: format!("{name:?} is not a valid header name"),
    })
}

impl Authenticator {
    /// Compiles `config`; keys from a `jwksUri` are looked up in (and fetched by) `remote`.
    /// `None` when no rule applies: nothing to authenticate.
    pub fn new(
        config: &RequestAuthentication,
        remote: &RemoteJwks,
    ) -> Result<Option<Self>, InvalidRule> {
        if config.is_empty() {
            return Ok(None);
        }
        let mut providers = Vec::with_capacity(config.rules.len());
        let mut sanitize = Vec::new();
        for rule in &config.rules {
            let issuer = rule.issuer.as_str();
            let keys = match &rule.keys {
                JwksSource::Inline(jwks) => {
                    Keys::Inline(Arc::new(KeySet::new(jwks).map_err(|e| InvalidRule {
                        issuer: issuer.to_owned(),
                        reason: e.to_string(),
                    })?))
                }
                JwksSource::Uri(uri) => Keys::Remote(remote.keys(uri, rule.timeout)),
            };
            let mut headers = rule
                .from_headers
                .iter()
                .map(|h| Ok((header_name(&h.name, issuer)?, h.prefix.clone())))
                .collect::<Result<Vec<_>, InvalidRule>>()?;
            let mut params = rule.from_params.clone();
            if rule.uses_default_locations() {
                headers.push((AUTHORIZATION, "Bearer ".to_owned()));
                params.push("access_token".to_owned());
            }
            let payload_header = rule
                .output_payload_to_header
                .as_deref()
                .map(|h| header_name(h, issuer))
                .transpose()?;
            let claim_headers = rule
                .output_claim_to_headers
                .iter()
                .map(|c| Ok((header_name(&c.header, issuer)?, c.claim.clone())))
                .collect::<Result<Vec<_>, InvalidRule>>()?;
            sanitize.extend(payload_header.iter().cloned());
            sanitize.extend(claim_headers.iter().map(|(h, _)| h.clone()));
            providers.push(Provider {
                issuer: rule.issuer.clone(),
                audiences: rule.audiences.clone(),
                keys,
                headers,
                params,
                cookies: rule.from_cookies.clone(),
                forward: rule.forward_original_token,
                payload_header,
                claim_headers,
            });
        }
        Ok(Some(Self {
            providers,
            sanitize,
        }))
    }

    /// What `req` has to wait for before it is authenticated: the first fetch of the
    /// `jwksUri` keys that a token of it needs (one at the rule's locations naming the rule's
    /// issuer), while that fetch is under way; each wait ends when the fetch does, at most the
    /// rule's `timeout` (5 s when unset) later. `None`, the common case, when nothing is
    /// pending: that costs one atomic load per `jwksUri` rule, and nothing for inline keys.
    ///
    /// Envoy's `jwt_authn` pauses a request the same way while the `remote_jwks` fetch it
    /// needs is in flight. Authenticate the request after the future resolves.
    pub fn pending_keys<B>(
        &self,
        req: &Request<B>,
    ) -> Option<impl Future<Output = ()> + Send + 'static + use<B>> {
        let mut pending = Vec::new();
        for p in &self.providers {
            if let Keys::Remote(keys) = &p.keys
                && keys.is_first_fetch_pending()
                && !is_cors_preflight(req)
                && p.extract(req).iter().any(|(token, _)| {
                    Jwt::parse(token).is_ok_and(|jwt| jwt.issuer() == Some(p.issuer.as_str()))
                })
            {
                pending.push(keys.clone());
            }
        }
        if pending.is_empty() {
            return None;
        }
        Some(async move {
            futures_util::future::join_all(pending.iter().map(RemoteKeys::first_fetch)).await;
        })
    }

    /// Authenticates `req` at `now` (seconds since the Unix epoch): `Ok(None)` when it carries
    /// no token, `Ok(Some(claims))` when a rule verified its tokens (the request is then
    /// rewritten: token header removed, output headers added), else why it is refused.
    pub fn authenticate<B>(
        &self,
        req: &mut Request<B>,
        now: u64,
    ) -> Result<Option<Claims>, JwtError> {
        for h in &self.sanitize {
            req.headers_mut().remove(h);
        }
        if is_cors_preflight(req) {
            return Ok(None);
        }
        let mut first_error = None;
        for p in &self.providers {
            let tokens = p.extract(req);
            if tokens.is_empty() {
                continue;
            }
            match p.verify_all(&tokens, now) {
                Ok(claims) => {
                    p.apply(req, &claims, &tokens);
                    return Ok(Some(claims));
                }
                // Envoy's `all(any(Pi, allow_missing))` reports the first rule whose
                // locations hold a token that fails.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(None), Err)
    }
}

fn is_cors_preflight<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    req.method() == http::Method::OPTIONS
        && h.get(http::header::ORIGIN).is_some_and(|v| !v.is_empty())
        && h.get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|v| !v.is_empty())
}

impl Provider {
    /// The tokens at this rule's locations.
    fn extract<B>(&self, req: &Request<B>) -> Vec<(String, Location)> {
        let mut out = Vec::new();
        for (name, prefix) in &self.headers {
            if let Some(value) = req.headers().get(name).and_then(|v| v.to_str().ok())
                && let Some(token) = value.strip_prefix(prefix.as_str())
            {
                out.push((token.trim().to_owned(), Location::Header(name.clone())));
            }
        }
        if !self.params.is_empty()
            && let Some(query) = req.uri().query()
        {
            for param in &self.params {
                if let Some(token) = query_param(query, param) {
                    out.push((token.to_owned(), Location::Kept));
                }
            }
        }
        if !self.cookies.is_empty() {
            for cookie in &self.cookies {
                if let Some(token) = cookie_value(req.headers(), cookie) {
                    out.push((token, Location::Kept));
                }
            }
        }
        out
    }

    /// Every token must be this rule's issuer's and verify; the first one's claims.
    fn verify_all(&self, tokens: &[(String, Location)], now: u64) -> Result<Claims, JwtError> {
        let keys = match &self.keys {
            Keys::Inline(k) => Some(k.clone()),
            Keys::Remote(k) => k.get(),
        };
        let mut first = None;
        for (token, _) in tokens {
            let jwt = Jwt::parse(token)?;
            if jwt.issuer() != Some(self.issuer.as_str()) {
                return Err(JwtError::UnknownIssuer);
            }
            let claims = jwt.verify(&self.audiences, keys.as_deref(), now)?;
            first.get_or_insert(claims);
        }
        first.ok_or(JwtError::BadFormat)
    }

    /// Rewrites the request after a successful verification.
    fn apply<B>(&self, req: &mut Request<B>, claims: &Claims, tokens: &[(String, Location)]) {
        let headers = req.headers_mut();
        if !self.forward {
            for (_, location) in tokens {
                if let Location::Header(name) = location {
                    headers.remove(name);
                }
            }
        }
        if let Some(name) = &self.payload_header
            && let Ok(value) = HeaderValue::from_str(claims.payload_base64url())
        {
            headers.insert(name.clone(), value);
        }
        for (name, claim) in &self.claim_headers {
            if let Some(value) = claims
                .claim_as_header(claim)
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                headers.append(name.clone(), value);
            }
        }
    }
}

/// The value of `name` in a query string (not percent-decoded, as Envoy's extractor does not:
/// a JWT is base64url and dots).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The value of cookie `name` in the request's `cookie` headers.
fn cookie_value(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

/// Envoy's realm: `<scheme>://<host><path>`, the path cut at 256 bytes
/// (`Http::Utility::buildOriginalUri` with `MaximumUriLength`).
fn realm<B>(req: &Request<B>, tls: bool) -> String {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(http::uri::Authority::as_str))
        .unwrap_or("");
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut end = path.len().min(256);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}{}", &path[..end])
}

/// The response Envoy's `jwt_authn` filter sends when `error` refuses `req` (`tls`: whether
/// it came over TLS, for the realm's scheme).
pub fn unauthenticated_response<B>(
    error: &JwtError,
    req: &Request<B>,
    tls: bool,
) -> Response<BoxBody> {
    let mut response = Response::new(body::full(error.to_string()));
    *response.status_mut() = if *error == JwtError::AudienceNotAllowed {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::UNAUTHORIZED
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    let challenge = format!(
        "Bearer realm=\"{}\", error=\"invalid_token\"",
        realm(req, tls).replace('"', "%22")
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        headers.insert(WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests;
