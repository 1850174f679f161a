//! API keys: the keys file, bearer-token authentication and roles.
//!
//! The keys file is JSON lines, one key per line; blank lines and lines starting with `#`
//! are ignored:
//!
//! ```text
//! # deployments upload telemetry
//! {"key": "dk_7f3a9c0e1b2d4f6a8c", "role": "deployment", "deployment_id": "edge-eu-1"}
//! # publishers upload artifacts
//! {"key": "pk_0b1c2d3e4f5a6b7c8d", "role": "publisher", "name": "ci"}
//! ```
//!
//! Keys are kept in memory only as SHA-256 digests, so a lookup compares digests and the
//! time it takes says nothing useful about the secret.

use std::fmt;
use std::path::Path;

use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::HeaderMap;
use loopai_http::{check_key, key_digest, KeyDigest, KeyFile, KeyProblem, LineErrors};
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result};
use crate::http::ApiError;

pub use loopai_http::{MAX_KEY_BYTES, MIN_KEY_BYTES};
/// The longest accepted `deployment_id` or `name`, in bytes.
const MAX_ID_BYTES: usize = 128;

/// What a key may do.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A deployment (a runtime): may upload telemetry for its own `deployment_id`, read
    /// the artifact repository and subscribe to notifications.
    Deployment,
    /// A publisher: may upload artifacts to the artifact repository (and read it), and
    /// read the query API and the dashboard.
    Publisher,
    /// A viewer: may only read the query API (`/api/v1/query/...`) and the dashboard.
    Viewer,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Deployment => "deployment",
            Role::Publisher => "publisher",
            Role::Viewer => "viewer",
        })
    }
}

/// The roles that may read the fleet: the query API and the dashboard.
pub(crate) const READERS: &[Role] = &[Role::Viewer, Role::Publisher];

/// Who a key belongs to: one line of the keys file, without the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    role: Role,
    deployment_id: Option<String>,
    name: Option<String>,
}

impl Principal {
    /// The key's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The deployment a `deployment` key belongs to (always set for that role).
    pub fn deployment_id(&self) -> Option<&str> {
        self.deployment_id.as_deref()
    }

    /// The optional human-readable label of the key.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// A short description for logs: `deployment edge-eu-1`, `publisher ci`.
    pub(crate) fn describe(&self) -> String {
        match (&self.deployment_id, &self.name) {
            (Some(id), _) => format!("{} {id}", self.role),
            (None, Some(name)) => format!("{} {name}", self.role),
            (None, None) => self.role.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLine {
    key: String,
    role: Role,
    #[serde(default)]
    deployment_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The API keys accepted by a server, loaded from a keys file.
///
/// ```
/// use loopai_cloud::{ApiKeys, Role};
///
/// let keys = ApiKeys::parse(
///     r#"{"key": "dk_7f3a9c0e1b2d4f6a8c", "role": "deployment", "deployment_id": "edge-eu-1"}"#,
///     "keys.jsonl",
/// )?;
/// let who = keys.authenticate("dk_7f3a9c0e1b2d4f6a8c").unwrap();
/// assert_eq!(who.role(), Role::Deployment);
/// assert_eq!(who.deployment_id(), Some("edge-eu-1"));
/// assert!(keys.authenticate("dk_something_else_entirely").is_none());
/// # Ok::<(), loopai_cloud::Error>(())
/// ```
#[derive(Clone)]
pub struct ApiKeys {
    keys: KeyFile<Principal>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

fn check_id(what: &str, value: &str) -> std::result::Result<(), String> {
    if value.is_empty() || value.len() > MAX_ID_BYTES {
        return Err(format!("{what}: must be 1-{MAX_ID_BYTES} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{what}: must not contain control characters"));
    }
    Ok(())
}

/// Checks one line of the keys file: its key's digest and who holds it.
fn entry(line: KeyLine, _line_no: usize) -> std::result::Result<(KeyDigest, Principal), String> {
    match check_key(&line.key) {
        Ok(()) => {}
        Err(KeyProblem::Length(len)) => {
            return Err(format!(
                "key: must be {MIN_KEY_BYTES}-{MAX_KEY_BYTES} bytes, got {len}"
            ))
        }
        Err(_) => return Err("key: may only contain printable ASCII without spaces".to_owned()),
    }
    if let Some(id) = &line.deployment_id {
        check_id("deployment_id", id)?;
    }
    if let Some(name) = &line.name {
        check_id("name", name)?;
    }
    match line.role {
        Role::Deployment if line.deployment_id.is_none() => {
            return Err("deployment_id: required for role \"deployment\"".to_owned());
        }
        Role::Publisher | Role::Viewer if line.deployment_id.is_some() => {
            return Err("deployment_id: only allowed for role \"deployment\"".to_owned());
        }
        _ => {}
    }
    let principal = Principal {
        role: line.role,
        deployment_id: line.deployment_id,
        name: line.name,
    };
    Ok((key_digest(&line.key), principal))
}

impl ApiKeys {
    /// Reads a keys file (see [API keys](crate#api-keys) for the format).
    pub fn from_file(path: impl AsRef<Path>) -> Result<ApiKeys> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        ApiKeys::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a keys file; `origin` (usually the file name) prefixes error
    /// messages: ``keys.jsonl:3: role: unknown variant `admin` ...``.
    pub fn parse(text: &str, origin: &str) -> Result<ApiKeys> {
        let keys = KeyFile::parse(text, origin, LineErrors::FieldPath, entry)
            .map_err(|e| Error::new(ErrorKind::Config, e.message()))?;
        Ok(ApiKeys { keys })
    }

    /// Who `key` belongs to, if it is a known key.
    pub fn authenticate(&self, key: &str) -> Option<&Principal> {
        self.keys.get(key)
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys (such a server refuses every authenticated request).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// How a server authenticates requests.
#[derive(Debug)]
pub(crate) enum Auth {
    /// No keys file: every request is accepted (a development server).
    Open,
    /// Requests need a known bearer key with the right role.
    Keys(ApiKeys),
}

/// The caller of an authorized request.
#[derive(Debug)]
pub(crate) enum Caller<'a> {
    /// The server runs open; nobody was authenticated.
    Anonymous,
    /// The holder of a known key with the required role.
    Key(&'a Principal),
}

impl Caller<'_> {
    pub(crate) fn describe(&self) -> String {
        match self {
            Caller::Anonymous => "anonymous".to_owned(),
            Caller::Key(p) => p.describe(),
        }
    }
}

impl Auth {
    /// Checks the request's `Authorization: Bearer <key>` header: 401 when it is missing,
    /// malformed or unknown; 403 when the key's role is not `required`.
    pub(crate) fn authorize(
        &self,
        headers: &HeaderMap,
        required: Role,
    ) -> std::result::Result<Caller<'_>, ApiError> {
        self.authorize_any(headers, &[required])
    }

    /// Like [`authorize_any`](Self::authorize_any), also accepting the key from the
    /// dashboard's session cookie ([`SESSION_COOKIE`]) when there is no `Authorization`
    /// header (browsers send the cookie; scripts send the header).
    pub(crate) fn authorize_browser(
        &self,
        headers: &HeaderMap,
        allowed: &[Role],
    ) -> std::result::Result<Caller<'_>, ApiError> {
        if headers.contains_key(AUTHORIZATION) {
            return self.authorize_any(headers, allowed);
        }
        let keys = match self {
            Auth::Open => return Ok(Caller::Anonymous),
            Auth::Keys(keys) => keys,
        };
        let token = session_cookie(headers)
            .ok_or_else(|| ApiError::unauthorized("not signed in: no API key given"))?;
        check_role(keys, &token, allowed)
    }

    /// Checks a key given directly (the dashboard's login form).
    pub(crate) fn authorize_key(
        &self,
        key: &str,
        allowed: &[Role],
    ) -> std::result::Result<Caller<'_>, ApiError> {
        match self {
            Auth::Open => Ok(Caller::Anonymous),
            Auth::Keys(keys) => check_role(keys, key, allowed),
        }
    }

    /// Like [`authorize`](Self::authorize), accepting any of `allowed` roles.
    pub(crate) fn authorize_any(
        &self,
        headers: &HeaderMap,
        allowed: &[Role],
    ) -> std::result::Result<Caller<'_>, ApiError> {
        let keys = match self {
            Auth::Open => return Ok(Caller::Anonymous),
            Auth::Keys(keys) => keys,
        };
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "missing `Authorization: Bearer <key>` header",
            ));
        };
        let value = value
            .to_str()
            .map_err(|_| ApiError::unauthorized("Authorization header is not ASCII"))?;
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => {
                return Err(ApiError::unauthorized(
                    "Authorization header must use the Bearer scheme",
                ))
            }
        };
        check_role(keys, token, allowed)
    }
}

/// The dashboard's session cookie: it holds the API key the user signed in with
/// (`HttpOnly`, `SameSite=Strict`), see `docs/cloud.md`.
pub(crate) const SESSION_COOKIE: &str = "loopai_key";

/// The value of the [`SESSION_COOKIE`] in the request's `Cookie` headers.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .and_then(|(_, value)| crate::http::form_decode(value.trim_matches('"')).ok())
}

fn check_role<'a>(
    keys: &'a ApiKeys,
    token: &str,
    allowed: &[Role],
) -> std::result::Result<Caller<'a>, ApiError> {
    let principal = keys
        .authenticate(token)
        .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
    if !allowed.contains(&principal.role) {
        let needed: Vec<String> = allowed.iter().map(Role::to_string).collect();
        return Err(ApiError::forbidden(format!(
            "this endpoint needs a {} key, not a {} key",
            needed.join(" or "),
            principal.role
        )));
    }
    Ok(Caller::Key(principal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_file_errors_name_the_line_and_field() {
        let cases = [
            ("{\"key\": \"short\", \"role\": \"deployment\", \"deployment_id\": \"d\"}", "k:1: key: must be 16-256 bytes"),
            ("\n# c\n{\"key\": \"aaaaaaaaaaaaaaaaaaaa\", \"role\": \"admin\"}", "k:3: role: unknown variant `admin`"),
            ("{\"key\": \"aaaaaaaaaaaaaaaaaaaa\", \"role\": \"deployment\"}", "k:1: deployment_id: required"),
            ("{\"key\": \"aaaaaaaaaaaaaaaaaaaa\", \"role\": \"publisher\", \"deployment_id\": \"d\"}", "k:1: deployment_id: only allowed"),
            ("{\"key\": \"aaaaaaaaaaaaaaaaaaaa\", \"role\": \"publisher\", \"extra\": 1}", "k:1: extra: unknown field `extra`"),
            ("{\"key\": \"aaaaaaaa aaaaaaaaaaa\", \"role\": \"publisher\"}", "k:1: key: may only contain"),
            ("{\"key\": \"aaaaaaaaaaaaaaaaaaaa\", \"role\": \"publisher\"}\n{\"key\": \"aaaaaaaaaaaaaaaaaaaa\", \"role\": \"publisher\"}", "k:2: key: the same key"),
        ];
        for (text, expected) in cases {
            let err = ApiKeys::parse(text, "k").unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Config);
            assert!(err.message().starts_with(expected), "{text}: {err}");
        }
    }

    #[test]
    fn authorize_distinguishes_missing_unknown_and_wrong_role() {
        let keys = ApiKeys::parse(
            "{\"key\": \"dddddddddddddddddddd\", \"role\": \"deployment\", \"deployment_id\": \"d1\"}\n\
             {\"key\": \"pppppppppppppppppppp\", \"role\": \"publisher\", \"name\": \"ci\"}",
            "k",
        )
        .unwrap();
        let auth = Auth::Keys(keys);
        let headers = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(AUTHORIZATION, v.parse().unwrap());
            }
            h
        };
        let status = |v: Option<&str>| {
            auth.authorize(&headers(v), Role::Deployment)
                .map(|c| c.describe())
                .map_err(|e| e.status().as_u16())
        };
        assert_eq!(status(None), Err(401));
        assert_eq!(status(Some("Basic dddddddddddddddddddd")), Err(401));
        assert_eq!(status(Some("Bearer nope-nope-nope-nope")), Err(401));
        assert_eq!(status(Some("Bearer pppppppppppppppppppp")), Err(403));
        assert_eq!(
            status(Some("bearer dddddddddddddddddddd")),
            Ok("deployment d1".to_owned())
        );
        let open = Auth::Open
            .authorize(&headers(None), Role::Deployment)
            .unwrap();
        assert_eq!(open.describe(), "anonymous");
    }

    #[test]
    fn browsers_authenticate_with_the_session_cookie() {
        let keys = ApiKeys::parse(
            "{\"key\": \"vvvvvvvvvvvvvvvvvvvv\", \"role\": \"viewer\", \"name\": \"ops\"}\n\
             {\"key\": \"dddddddddddddddddddd\", \"role\": \"deployment\", \"deployment_id\": \"d1\"}",
            "k",
        )
        .unwrap();
        let auth = Auth::Keys(keys);
        let readers = [Role::Viewer, Role::Publisher];
        let with_cookie = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(COOKIE, v.parse().unwrap());
            auth.authorize_browser(&h, &readers)
                .map(|c| c.describe())
                .map_err(|e| e.status().as_u16())
        };
        assert_eq!(
            with_cookie("theme=dark; loopai_key=vvvvvvvvvvvvvvvvvvvv"),
            Ok("viewer ops".to_owned())
        );
        assert_eq!(with_cookie("loopai_key=dddddddddddddddddddd"), Err(403));
        assert_eq!(with_cookie("loopai_key=wrong-wrong-wrong-wrong"), Err(401));
        assert_eq!(with_cookie("other=1"), Err(401));
        assert_eq!(
            auth.authorize_browser(&HeaderMap::new(), &readers)
                .map_err(|e| e.status().as_u16())
                .unwrap_err(),
            401
        );
    }
}
