//! Authentication: users' HS256 tokens and backends' API key.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tidings_protocol::UserId;

use crate::error::ApiError;

/// A token's claims: `sub` the user, `exp` required, `nbf` honoured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Required; optional here so that a token without it is reported as
    /// missing a claim rather than as malformed.
    #[serde(default)]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// Verifies users' tokens and the backends' key.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    api_key: Option<String>,
}

impl Auth {
    pub fn new(secret: &[u8], api_key: Option<String>) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            api_key,
        }
    }

    /// The user a token speaks for, or `unauthorized` saying why not.
    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            let why = match err.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet",
                ErrorKind::InvalidSignature => "the token's signature does not match",
                ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (sub, exp)",
                _ => "the token is malformed",
            };
            ApiError::unauthorized(why)
        })?;
        UserId::try_from(data.claims.sub)
            .map_err(|_| ApiError::unauthorized("the token's sub is not a valid user id"))
    }

    /// A token for `user`, valid for `ttl_secs`.
    pub fn issue(&self, user: &UserId, ttl_secs: u64) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            sub: user.to_string(),
            exp: Some(now + ttl_secs),
            nbf: None,
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing cannot fail")
    }

    /// Whether `key` is the backends' API key (compared in constant time).
    pub fn is_api_key(&self, key: &str) -> bool {
        let Some(expected) = &self.api_key else {
            return false;
        };
        let (a, b) = (expected.as_bytes(), key.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let value = header?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(secret: &[u8], claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn accepts_good_tokens_and_says_why_it_refuses_others() {
        let auth = Auth::new(b"secret", None);
        let good = token(
            b"secret",
            serde_json::json!({"sub": "alice", "exp": now() + 60}),
        );
        assert_eq!(auth.verify(&good).unwrap().as_str(), "alice");
        let issued = auth.issue(&UserId::try_from("bob").unwrap(), 60);
        assert_eq!(auth.verify(&issued).unwrap().as_str(), "bob");

        let cases = [
            (
                token(b"other", serde_json::json!({"sub": "a", "exp": now() + 60})),
                "signature",
            ),
            (
                token(
                    b"secret",
                    serde_json::json!({"sub": "a", "exp": now() - 10}),
                ),
                "expired",
            ),
            (token(b"secret", serde_json::json!({"sub": "a"})), "claim"),
            (
                token(
                    b"secret",
                    serde_json::json!({"sub": "a", "exp": now() + 60, "nbf": now() + 30}),
                ),
                "not valid yet",
            ),
            (
                token(
                    b"secret",
                    serde_json::json!({"sub": "a b", "exp": now() + 60}),
                ),
                "user id",
            ),
            ("not.a.token".to_owned(), "malformed"),
        ];
        for (token, why) in cases {
            let err = auth.verify(&token).unwrap_err();
            assert!(err.message().contains(why), "{why}: {}", err.message());
        }
    }

    #[test]
    fn api_keys_and_bearer_headers() {
        let auth = Auth::new(b"s", Some("key".into()));
        assert!(auth.is_api_key("key"));
        assert!(!auth.is_api_key("kez"));
        assert!(!Auth::new(b"s", None).is_api_key(""));
        assert_eq!(bearer(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(None), None);
    }
}
