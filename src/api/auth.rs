//! Who may call the runtime API for which org. In a cluster: the bearer
//! token is checked with a TokenReview, then the caller must be allowed the
//! verb `use` on the resource `runtime` of the group `idplane.dev` in the
//! org's namespace (a SubjectAccessReview). Without a cluster: a token file
//! binds each token to a list of orgs. Decisions are cached briefly so the
//! request path rarely leaves the process.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use serde::Deserialize;

use crate::http::ApiError;

/// The RBAC verb a Role must grant on `runtime` in the org's namespace.
pub const RBAC_VERB: &str = "use";
/// The RBAC resource (in group `idplane.dev`).
pub const RBAC_RESOURCE: &str = "runtime";

/// One entry of a token file.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenEntry {
    /// Who the token belongs to, for logs.
    pub name: String,
    pub token: String,
    /// Orgs the token may call; `*` for all.
    pub orgs: Vec<String>,
}

/// A token file: `tokens: [{name, token, orgs}]`.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenFile {
    pub tokens: Vec<TokenEntry>,
}

/// Errors reading a token file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

impl TokenFile {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: TokenFile = serde_yaml::from_str(&text).map_err(|e| AuthError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        for (i, t) in file.tokens.iter().enumerate() {
            if t.token.len() < 16 {
                return Err(AuthError::Invalid {
                    path: path.display().to_string(),
                    message: format!(
                        "tokens[{i}] ({}): a token must be at least 16 characters",
                        t.name
                    ),
                });
            }
        }
        Ok(file)
    }
}

/// Constant-time equality, so a token cannot be guessed byte by byte.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Recent decisions by (token, org), with when they were made.
type DecisionCache = HashMap<(String, String), (Result<String, ApiError>, Instant)>;

/// Checks callers.
pub enum Authenticator {
    Tokens(TokenFile),
    Kube {
        client: Client,
        cache: Mutex<DecisionCache>,
        ttl: Duration,
    },
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn forbidden(who: &str, org: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{who} may not call the runtime of org {org}"),
    )
}

impl Authenticator {
    pub fn kube(client: Client) -> Self {
        Self::Kube {
            client,
            cache: Mutex::new(HashMap::new()),
            ttl: Duration::from_secs(10),
        }
    }

    /// Authenticates the `Authorization` header and authorizes it for `org`;
    /// returns the caller's name.
    pub async fn authorize(&self, header: Option<&str>, org: &str) -> Result<String, ApiError> {
        let token = header
            .and_then(bearer_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("send a bearer token: Authorization: Bearer TOKEN"))?;
        match self {
            Self::Tokens(file) => {
                let entry = file
                    .tokens
                    .iter()
                    .find(|e| same_secret(e.token.as_bytes(), token.as_bytes()))
                    .ok_or_else(|| unauthorized("the token is not valid"))?;
                if entry.orgs.iter().any(|o| o == "*" || o == org) {
                    Ok(entry.name.clone())
                } else {
                    Err(forbidden(&entry.name, org))
                }
            }
            Self::Kube { client, cache, ttl } => {
                let cache_key = (token.to_string(), org.to_string());
                if let Some((result, at)) = cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&cache_key)
                    && at.elapsed() < *ttl
                {
                    return result.clone();
                }
                let result = kube_review(client, token, org).await;
                let cacheable =
                    !matches!(&result, Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE);
                if cacheable {
                    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                    if cache.len() > 10_000 {
                        cache.clear();
                    }
                    cache.insert(cache_key, (result.clone(), Instant::now()));
                }
                result
            }
        }
    }
}

async fn kube_review(client: &Client, token: &str, org: &str) -> Result<String, ApiError> {
    let unavailable = |e: kube::Error| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "auth_unavailable",
            format!("cannot check the token with the apiserver: {e}"),
        )
    };
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .map_err(unavailable)?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(unauthorized("the token is not valid"));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.clone().unwrap_or_default();
    let sars: Api<SubjectAccessReview> = Api::all(client.clone());
    let sar = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            uid: user.uid.clone(),
            groups: user.groups.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(org.to_string()),
                verb: Some(RBAC_VERB.into()),
                group: Some(crate::resources::GROUP.into()),
                resource: Some(RBAC_RESOURCE.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = sars
        .create(&PostParams::default(), &sar)
        .await
        .map_err(unavailable)?;
    if answer.status.is_some_and(|s| s.allowed) {
        Ok(username)
    } else {
        Err(forbidden(&username, org))
    }
}

/// The token of an `Authorization: Bearer TOKEN` header. The scheme is
/// case-insensitive (RFC 9110, 11.1), and spaces around the token are
/// allowed.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t1", "bearer t1", "BEARER t1", "BeArEr  t1 "] {
            assert_eq!(bearer_token(header), Some("t1"), "{header:?}");
        }
        for header in ["Basic dTpw", "Bearert1", "t1", "Bearer"] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }

    #[tokio::test]
    async fn token_file_binds_tokens_to_orgs() {
        let auth = Authenticator::Tokens(TokenFile {
            tokens: vec![
                TokenEntry {
                    name: "svc".into(),
                    token: "t-aaaaaaaaaaaaaaaa".into(),
                    orgs: vec!["acme".into()],
                },
                TokenEntry {
                    name: "admin".into(),
                    token: "t-bbbbbbbbbbbbbbbb".into(),
                    orgs: vec!["*".into()],
                },
            ],
        });
        assert_eq!(
            auth.authorize(Some("Bearer t-aaaaaaaaaaaaaaaa"), "acme")
                .await
                .unwrap(),
            "svc"
        );
        let e = auth
            .authorize(Some("Bearer t-aaaaaaaaaaaaaaaa"), "globex")
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (403, "forbidden"));
        let e = auth
            .authorize(Some("Bearer nope"), "acme")
            .await
            .unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (401, "unauthorized"));
        let e = auth.authorize(None, "acme").await.unwrap_err();
        assert_eq!(e.status.as_u16(), 401);
        assert_eq!(
            auth.authorize(Some("Bearer t-bbbbbbbbbbbbbbbb"), "globex")
                .await
                .unwrap(),
            "admin"
        );
    }
}
