//! HTTP routes: `fn app(state) -> Router`, testable without a socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRef, FromRequest, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};

use serde::Deserialize;
use serde_json::json;
use tidings_actors::connection::{Bucket, RateLimit};
use tidings_cluster::replication::meta::{state_name, ClusterRecord, Operation};
use tidings_protocol::{Cmid, ConvId, ErrorCode, UserId};

use crate::auth::bearer;
use crate::error::ApiError;
use crate::{assets, ws, AppState};

/// Largest HTTP request body.
pub(crate) const MAX_BODY: usize = 64 * 1024;

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::script))
        .route("/app.css", get(assets::style))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/nodes/{node}/drain", post(drain_node))
        .route("/v1/cluster/nodes/{node}", delete(remove_node))
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/dev/token", post(dev_token))
        .route(
            "/v1/conversations",
            post(create_conversation).get(list_conversations),
        )
        .route(
            "/v1/conversations/{conv}/messages",
            post(send_to_conversation).get(conversation_history),
        )
        .route(
            "/v1/users/{user}/messages",
            post(send_direct).get(direct_history),
        )
        .route("/v1/users/{user}/notifications", post(notify))
        .route("/v1/presence", get(presence))
        .route("/v1/blocks", get(list_blocked))
        .route("/v1/blocks/{user}", put(block).delete(unblock))
        .route("/v1/notifications", get(notifications))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A JSON body whose rejections are API errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct JsonBody<T>(pub T);

/// A query string whose rejections are API errors.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryArgs<T>(pub T);

/// The bearer token of a request's `Authorization` header.
pub fn bearer_of(parts: &Parts) -> Option<&str> {
    bearer(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// The user whose token is in `Authorization: Bearer`, within the user's
/// rate: each request takes a token from the user's bucket, and one over
/// it is answered 429 with `Retry-After`.
pub struct AuthUser(pub UserId);

impl<S> FromRequestParts<S> for AuthUser
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let state = AppState::from_ref(state);
        let token = bearer_of(parts).ok_or_else(|| {
            ApiError::unauthorized("missing Authorization: Bearer token").into_response()
        })?;
        let user = state
            .auth
            .verify(token)
            .map_err(IntoResponse::into_response)?;
        let limit = RateLimit {
            per_second: state.config.rate_limit,
            burst: state.config.rate_burst,
        };
        if let Err(wait) = state.http_rates.take(&user, limit, Instant::now()) {
            // Whole seconds, rounded up: `Retry-After` has no fractions.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let refused = ApiError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} requests per second; slow down",
                    limit.per_second
                ),
            );
            return Err(([(header::RETRY_AFTER, secs.max(1).to_string())], refused).into_response());
        }
        Ok(AuthUser(user))
    }
}

/// Users' buckets with more than this many entries are pruned of the full
/// ones (a full bucket is what a new one would be).
const RATES_PRUNED_ABOVE: usize = 10_000;

/// Each user's token bucket for the HTTP API: the same size as one
/// WebSocket's, shared by all of the user's requests to this node.
#[derive(Clone, Default)]
pub struct UserRates(Arc<Mutex<HashMap<UserId, Bucket>>>);

impl UserRates {
    /// Takes a token of `user`'s bucket, or says how long until one comes.
    pub fn take(&self, user: &UserId, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.0.lock().expect("rates lock");
        if buckets.len() > RATES_PRUNED_ABOVE && !buckets.contains_key(user) {
            buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let bucket = buckets
            .entry(user.clone())
            .or_insert_with(|| Bucket::new(limit));
        if bucket.take(now) {
            Ok(())
        } else {
            Err(bucket.retry_after(now))
        }
    }
}

/// A backend presenting the node's API key.
pub struct Backend;

impl<S> FromRequestParts<S> for Backend
where
    AppState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let state = AppState::from_ref(state);
        match bearer_of(parts) {
            Some(key) if state.auth.is_api_key(key) => Ok(Backend),
            _ => Err(ApiError::unauthorized(
                "this endpoint takes the node's API key",
            )),
        }
    }
}

fn parse<T: TryFrom<String, Error = tidings_protocol::IdError>>(
    value: String,
) -> Result<T, ApiError> {
    T::try_from(value).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// 200 while the node's writes succeed; 503 with the reason from the
/// first failed write until one succeeds again.
async fn healthz(State(state): State<AppState>) -> Response {
    let failing = state.storage.failing();
    let status = match failing {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut body = json!({
        "status": if failing.is_none() { "ok" } else { "failing" },
        "version": env!("CARGO_PKG_VERSION"),
        "connections": state.metrics.connections.get(),
    });
    if let Some(reason) = failing {
        body["reason"] = json!(format!("storage writes fail: {reason}"));
    }
    (status, Json(body)).into_response()
}

/// The nodes of the cluster as this node sees them, and each shard's
/// group; a node running alone lists itself and no shards.
async fn cluster(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(Json(json!({
            "node": state.config.node_id,
            "nodes": [{
                "id": state.config.node_id,
                "addr": null,
                "state": "up",
                "self": true,
            }],
            "shards": [],
        })));
    };
    let view = cluster.view().await.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "the cluster view did not answer in time",
        )
    })?;
    let mut body = serde_json::to_value(view)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
    let shards = state
        .replicator
        .as_ref()
        .map(|r| r.shards())
        .unwrap_or_default();
    body["shards"] = json!(shards);
    if let Some(replicator) = &state.replicator {
        if let Some(record) = replicator.record() {
            add_membership(&mut body, &record);
        }
        body["moves"] = json!(replicator.moves());
    }
    Ok(Json(body))
}

/// Each node's membership state from the cluster record, beside whether it
/// is up; nodes the record holds that this node has no link to (removed
/// ones) are listed too.
fn add_membership(body: &mut serde_json::Value, record: &ClusterRecord) {
    body["cluster"] = json!(format!("{:016x}", record.id));
    body["replicas_per_shard"] = json!(record.replicas);
    let mut seen = std::collections::BTreeSet::new();
    if let Some(nodes) = body["nodes"].as_array_mut() {
        for node in nodes.iter_mut() {
            let Some(id) = node["id"].as_str().map(str::to_owned) else {
                continue;
            };
            if let Some(known) = record.nodes.get(&id) {
                node["membership"] = json!(state_name(known.state));
                seen.insert(id);
            }
        }
        for (id, known) in &record.nodes {
            if !seen.contains(id) {
                nodes.push(json!({
                    "id": id,
                    "addr": known.addr,
                    "state": "down",
                    "self": false,
                    "membership": state_name(known.state),
                }));
            }
        }
    }
}

/// `POST /v1/cluster/nodes/{node}/drain`: the node takes no new replicas
/// and gives up its leaderships, then its replicas; `GET /v1/cluster` shows
/// it `drained` once it holds nothing.
async fn drain_node(
    _: Backend,
    State(state): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    change_cluster(&state, Operation::Drain { node: node.clone() }, &node).await
}

/// `DELETE /v1/cluster/nodes/{node}`: forgets a node that is down; every
/// shard that had a replica there gets one on a live node.
async fn remove_node(
    _: Backend,
    State(state): State<AppState>,
    Path(node): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    change_cluster(&state, Operation::Remove { node: node.clone() }, &node).await
}

async fn change_cluster(
    state: &AppState,
    op: Operation,
    node: &str,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Some(replicator) = &state.replicator else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "this node runs alone: it has no cluster to change",
        ));
    };
    let record = replicator.operate(op).await?;
    let known = record.nodes.get(node);
    Ok(Json(json!({
        "node": node,
        "membership": known.map(|n| state_name(n.state)),
    })))
}

async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(state.storage.commit_stats());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    user: UserId,
}

async fn dev_token(
    State(state): State<AppState>,
    body: Result<JsonBody<TokenRequest>, ApiError>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.config.dev {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no such endpoint (tokens are issued only with --dev)",
        ));
    }
    let JsonBody(request) = body?;
    let token = state
        .auth
        .issue(&request.user, state.config.dev_token_ttl.as_secs());
    Ok(Json(json!({ "token": token, "user": request.user })))
}

#[derive(Deserialize)]
struct CreateRequest {
    #[serde(default)]
    members: Vec<UserId>,
    #[serde(default)]
    title: Option<String>,
}

async fn create_conversation(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    JsonBody(request): JsonBody<CreateRequest>,
) -> Result<Response, ApiError> {
    let created = state
        .service
        .create(&user, request.members, request.title)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "conv": created.conv, "version": created.version })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
}

async fn list_conversations(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    QueryArgs(query): QueryArgs<ListQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let after: Option<ConvId> = query.after.map(parse).transpose()?;
    let (conversations, blocked) = tokio::join!(
        state.service.conversations(&user, after.as_ref()),
        state.service.blocked(&user)
    );
    let (conversations, more) = conversations?;
    Ok(Json(
        json!({ "conversations": conversations, "more": more, "blocked": blocked? }),
    ))
}

async fn list_blocked(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<serde_json::Value>, ApiError> {
    let blocked = state.service.blocked(&user).await?;
    Ok(Json(json!({ "blocked": blocked })))
}

async fn block(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(other): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let other: UserId = parse(other)?;
    state.service.block(&user, &other, true).await?;
    Ok(Json(json!({ "user": other, "blocked": true })))
}

async fn unblock(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(other): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let other: UserId = parse(other)?;
    state.service.block(&user, &other, false).await?;
    Ok(Json(json!({ "user": other, "blocked": false })))
}

#[derive(Deserialize)]
struct SendRequest {
    body: String,
    #[serde(default)]
    cmid: Option<Cmid>,
    #[serde(default)]
    expect: Option<u64>,
}

#[derive(Deserialize)]
struct PageQuery {
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<u32>,
}

async fn send_to(
    state: &AppState,
    user: &UserId,
    conv: &ConvId,
    request: SendRequest,
) -> Result<Response, ApiError> {
    let ack = state
        .service
        .send(user, conv, request.body, request.cmid, request.expect)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "conv": ack.conv, "version": ack.version, "ts": ack.ts, "dup": ack.dup.unwrap_or(false),
        })),
    )
        .into_response())
}

async fn history_of(
    state: &AppState,
    user: &UserId,
    conv: &ConvId,
    page: PageQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = state
        .service
        .history(user, conv, page.after, page.before, page.limit)
        .await?;
    Ok(Json(
        json!({ "conv": page.conv, "version": page.version, "events": page.events, "more": page.more }),
    ))
}

async fn send_to_conversation(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(conv): Path<String>,
    JsonBody(request): JsonBody<SendRequest>,
) -> Result<Response, ApiError> {
    send_to(&state, &user, &parse(conv)?, request).await
}

async fn conversation_history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(conv): Path<String>,
    QueryArgs(page): QueryArgs<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    history_of(&state, &user, &parse(conv)?, page).await
}

async fn send_direct(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(other): Path<String>,
    JsonBody(request): JsonBody<SendRequest>,
) -> Result<Response, ApiError> {
    let other: UserId = parse(other)?;
    let created = state.service.dm(&user, &other).await?;
    send_to(&state, &user, &created.conv, request).await
}

async fn direct_history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(other): Path<String>,
    QueryArgs(page): QueryArgs<PageQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let other: UserId = parse(other)?;
    history_of(&state, &user, &ConvId::direct(&user, &other), page).await
}

#[derive(Deserialize)]
struct PresenceQuery {
    users: String,
}

async fn presence(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    QueryArgs(query): QueryArgs<PresenceQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let users = query
        .users
        .split(',')
        .filter(|u| !u.is_empty())
        .map(|u| parse::<UserId>(u.to_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    let users = state.service.presence(&user, &users).await?;
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
struct NotificationsQuery {
    after: Option<u64>,
    limit: Option<u32>,
}

async fn notifications(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    QueryArgs(query): QueryArgs<NotificationsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let page = state
        .service
        .notifications(&user, Some(query.after.unwrap_or(0)), query.limit)
        .await?;
    Ok(Json(
        json!({ "version": page.version, "events": page.events, "more": page.more }),
    ))
}

#[derive(Deserialize)]
struct NotifyRequest {
    payload: serde_json::Value,
}

async fn notify(
    State(state): State<AppState>,
    _backend: Backend,
    Path(user): Path<String>,
    JsonBody(request): JsonBody<NotifyRequest>,
) -> Result<Response, ApiError> {
    let user: UserId = parse(user)?;
    let version = state.service.notify(&user, request.payload).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "user": user, "version": version })),
    )
        .into_response())
}
