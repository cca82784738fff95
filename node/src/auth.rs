//! Authentication: users' HS256 tokens and backends' API key.

use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
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

/// A token that passed: whom it speaks for, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user: UserId,
    /// Unix seconds: the token is refused from this second on.
    pub exp: u64,
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
        self.verify_token(token).map(|verified| verified.user)
    }

    /// The user a token speaks for and when it expires, or `unauthorized`
    /// saying why not.
    pub fn verify_token(&self, token: &str) -> Result<Verified, ApiError> {
        // A header naming critical extensions must be refused unless every
        // one is understood (RFC 7515, section 4.1.11); this node
        // understands none. jsonwebtoken reads `crit` but does not check it.
        let header =
            decode_header(token).map_err(|_| ApiError::unauthorized("the token is malformed"))?;
        if let Some(crit) = header.crit {
            return Err(ApiError::unauthorized(format!(
                "the token's header marks extensions critical that this node does not understand: {crit:?}"
            )));
        }
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
        let exp = data
            .claims
            .exp
            .ok_or_else(|| ApiError::unauthorized("the token lacks a required claim (sub, exp)"))?;
        // Valid only before `exp` (RFC 7519, section 4.1.4); jsonwebtoken
        // still takes a token in the second of its `exp`.
        if exp <= unix_now() {
            return Err(ApiError::unauthorized("the token has expired"));
        }
        let user = UserId::try_from(data.claims.sub)
            .map_err(|_| ApiError::unauthorized("the token's sub is not a valid user id"))?;
        Ok(Verified { user, exp })
    }

    /// A token for `user`, valid for `ttl_secs`.
    pub fn issue(&self, user: &UserId, ttl_secs: u64) -> String {
        let now = unix_now();
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

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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

    const SECRET: &[u8] = b"a-secret-of-at-least-thirty-two-bytes";

    #[test]
    fn accepts_good_tokens_and_says_why_it_refuses_others() {
        let auth = Auth::new(SECRET, None);
        let good = token(
            SECRET,
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
                token(SECRET, serde_json::json!({"sub": "a", "exp": now() - 10})),
                "expired",
            ),
            // Valid only before its `exp`: not in that very second.
            (
                token(SECRET, serde_json::json!({"sub": "a", "exp": now()})),
                "expired",
            ),
            (token(SECRET, serde_json::json!({"sub": "a"})), "claim"),
            (
                token(
                    SECRET,
                    serde_json::json!({"sub": "a", "exp": now() + 60, "nbf": now() + 30}),
                ),
                "not valid yet",
            ),
            (
                token(SECRET, serde_json::json!({"sub": "a b", "exp": now() + 60})),
                "user id",
            ),
            ("not.a.token".to_owned(), "malformed"),
        ];
        for (token, why) in cases {
            let err = auth.verify(&token).unwrap_err();
            assert!(err.message().contains(why), "{why}: {}", err.message());
        }
    }

    fn token_with_crit(crit: Option<Vec<String>>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.crit = crit;
        encode(&header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[test]
    fn refuses_critical_header_extensions_it_does_not_understand() {
        let auth = Auth::new(SECRET, None);
        let claims = serde_json::json!({"sub": "alice", "exp": now() + 60});
        let plain = token_with_crit(None, &claims);
        let verified = auth.verify_token(&plain).unwrap();
        assert_eq!(verified.user.as_str(), "alice");
        assert_eq!(verified.exp, claims["exp"].as_u64().unwrap());

        let critical = token_with_crit(Some(vec!["exp-ext".into()]), &claims);
        let err = auth.verify(&critical).unwrap_err();
        assert!(err.message().contains("critical"), "{}", err.message());
        // An empty list is not allowed either (RFC 7515, section 4.1.11).
        assert!(auth
            .verify(&token_with_crit(Some(vec![]), &claims))
            .is_err());
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
