//! The stateless HTTP API. Every handler is a thin mapping onto the directory
//! and [`ChatServer`]; any server of a deployment can answer any call.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{
    ConnectInfo, FromRequest, FromRequestParts, MatchedPath, OriginalUri, Request, State,
};
use axum::http::request::Parts;
use axum::http::uri::Authority;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chat_core::api::{
    AuthResponse, ChannelList, ChannelsQuery, CreateGroupRequest, ErrorBody, FriendAnswer,
    FriendRequests, FriendStatus, GroupChange, HistoryQuery, InvitationList, LoginRequest,
    MessagePage, OpenDirectRequest, PendingFriend, PresenceList, PresenceQuery, RefreshRequest,
    RegisterDeviceRequest, RouteQuery, RouteResponse, SignupRequest, UpdatePrivacyRequest,
    UpdateProfileRequest, UserList, MAX_CHANNEL_PAGE,
};
use chat_core::protocol::{ErrorCode, Event, WireError};
use chat_core::text::{validate_about, validate_name};
use chat_core::types::validate_username;
use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, FriendOutcome, Page, Privacy, Profile, User,
    UserId, UserRecord,
};
use serde::de::DeserializeOwned;
use tracing::Instrument;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Claims, TokenKind};
use crate::consent::Joined;
use crate::limits::{HttpError, Throttled};
use crate::server::{clamp_limit, err, wire, ApiResult, ChatServer};

/// Longest push token, in bytes.
const MAX_PUSH_TOKEN: usize = 4_096;

/// An HTTP error: the status of its code and `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) WireError);

impl From<WireError> for ApiError {
    fn from(e: WireError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(ErrorBody { error: self.0 })).into_response()
    }
}

pub(crate) type HttpResult<T> = Result<T, ApiError>;

/// A JSON body whose rejection is an [`ApiError`] with code `invalid_input`.
pub(crate) struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(|e| ApiError(err(ErrorCode::InvalidInput, e.body_text())))
    }
}

/// A query string whose rejection is an [`ApiError`].
pub(crate) struct Q<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| ApiError(err(ErrorCode::InvalidInput, e.body_text())))
    }
}

/// Path parameters whose rejection is an [`ApiError`].
pub(crate) struct P<T>(pub(crate) T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| ApiError(err(ErrorCode::InvalidInput, e.body_text())))
    }
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The claims of the caller's access token, checked against the directory.
async fn authenticated(parts: &Parts, server: &ChatServer) -> Result<Claims, ApiError> {
    let token = bearer(&parts.headers)
        .ok_or_else(|| err(ErrorCode::Unauthorized, "missing bearer token"))?;
    let claims = server.authenticate(&token, TokenKind::Access).await?;
    tracing::Span::current().record("user", tracing::field::display(claims.sub));
    Ok(claims)
}

/// The authenticated caller.
pub(crate) struct Caller(pub(crate) UserId);

impl FromRequestParts<ChatServer> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, server: &ChatServer) -> Result<Self, ApiError> {
        Ok(Caller(authenticated(parts, server).await?.sub))
    }
}

/// The authenticated caller's token claims (for log-out).
pub(crate) struct CallerToken(Claims);

impl FromRequestParts<ChatServer> for CallerToken {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, server: &ChatServer) -> Result<Self, ApiError> {
        Ok(CallerToken(authenticated(parts, server).await?))
    }
}

/// Longest request id taken from an `X-Request-Id` header, in bytes.
const MAX_REQUEST_ID: usize = 64;

/// The request's id: the caller's `X-Request-Id` when it is 1 to 64
/// visible ASCII characters, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::new_v4().simple().to_string(), str::to_owned)
}

const REQUEST_ID: &str = "x-request-id";

/// Runs every HTTP request in a span with its method, route, request id
/// and (once authenticated) user, so each line it logs names them; answers
/// with the request id in `X-Request-Id`. The route is the matched pattern,
/// never the URI: a WebSocket URI carries the access token.
async fn traced(request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let span = tracing::info_span!(
        "http",
        method = %request.method(),
        route,
        request_id = %id,
        user = tracing::field::Empty,
    );
    async move {
        let mut response = next.run(request).await;
        let status = response.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), "request done");
        }
        if let Ok(value) = axum::http::HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        response
    }
    .instrument(span)
    .await
}

/// `GET /metrics`: the node's metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format (when served on the API listener)", body = String, content_type = "text/plain"))
)]
pub(crate) async fn metrics(State(server): State<ChatServer>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        server.metrics_text(),
    )
        .into_response()
}

/// The HTTP routes plus the WebSocket endpoint, bound to `server`.
pub(crate) fn routes(server: ChatServer) -> Router {
    let cfg = server.config();
    let (mut router, _) = api_routes().split_for_parts();
    if cfg.metrics_route {
        router = router.route("/metrics", get(metrics));
    }
    if cfg.web_chat {
        router = router.merge(crate::web::routes());
    }
    router
        .route("/v1/openapi.json", get(openapi_json))
        .route(
            "/v1/ws",
            get(crate::ws::upgrade).route_layer(axum::middleware::from_fn_with_state(
                server.clone(),
                crate::origin::check,
            )),
        )
        .fallback(unmatched)
        .layer(axum::middleware::from_fn(traced))
        .with_state(server)
}

/// Every API route with its OpenAPI operation: the routes are registered
/// from the operations' paths, so the description cannot leave one out
/// or name one that does not exist. (`/v1/ws` is a WebSocket, described in
/// docs/protocol.md; `/` is the web chat's page.)
fn api_routes() -> OpenApiRouter<ChatServer> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(signup))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(logout_all))
        .routes(routes!(me, update_me))
        .routes(routes!(privacy, update_privacy))
        .routes(routes!(user))
        .routes(routes!(user_by_name))
        .routes(routes!(friends))
        .routes(routes!(friend_requests))
        .routes(routes!(add_friend, remove_friend))
        .routes(routes!(blocked))
        .routes(routes!(block, unblock))
        .routes(routes!(channels))
        .routes(routes!(open_direct))
        .routes(routes!(channel))
        .routes(routes!(history))
        .routes(routes!(create_group))
        .routes(routes!(add_member, remove_member))
        .routes(routes!(invitations))
        .routes(routes!(accept_invitation, decline_invitation))
        .routes(routes!(register_device))
        .routes(routes!(presence))
        .routes(routes!(route))
        .routes(routes!(crate::attachments::upload))
        .routes(routes!(crate::attachments::download))
        .routes(routes!(crate::attachments::thumbnail))
        .routes(routes!(crate::search::search))
}

/// The OpenAPI 3 description of the HTTP API (`GET /v1/openapi.json`, and
/// `docs/openapi.json`, which a test keeps equal to it).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = api_routes().split_for_parts();
    let (_, metrics_doc) = OpenApiRouter::<ChatServer>::new()
        .routes(routes!(metrics))
        .split_for_parts();
    doc.merge(metrics_doc);
    doc
}

async fn openapi_json() -> Response {
    Json(openapi()).into_response()
}

/// A path no route matches, or a method the path does not take: the same
/// JSON error body as every other failure.
async fn unmatched() -> ApiError {
    ApiError(err(ErrorCode::NotFound, "no such endpoint"))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Chat server HTTP API",
        description = "The stateless HTTP API of the chat server. The WebSocket protocol (`GET /v1/ws`) is in docs/protocol.md.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Sign-up, log-in, tokens"),
        (name = "profile", description = "The caller's profile and privacy settings"),
        (name = "users", description = "Other users"),
        (name = "friends", description = "Friend requests and friends"),
        (name = "blocks", description = "Blocking users"),
        (name = "channels", description = "Direct channels, channel lists and history"),
        (name = "groups", description = "Groups, members and invitations"),
        (name = "devices", description = "Devices and push tokens"),
        (name = "presence", description = "Presence and routing"),
        (name = "operations", description = "Health and metrics"),
        (name = "attachments", description = "Uploading and downloading files"),
        (name = "search", description = "Searching the messages of one's channels")
    )
)]
struct ApiDoc;

/// The `bearer` security scheme: the access token.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The access token of sign-up, log-in or refresh"))
                    .build(),
            ),
        );
    }
}

/// Every error: `{"error": {"code", "message", "retryable"}}` with the
/// status of its code (docs/protocol.md, Errors).
pub(crate) struct Errors;

impl utoipa::IntoResponses for Errors {
    fn responses() -> std::collections::BTreeMap<
        String,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    > {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let response = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
                .into()
        };
        [
            (
                "4XX".to_owned(),
                response("A client error; `error.code` says which"),
            ),
            (
                "5XX".to_owned(),
                response("A node failure (`unavailable`, retryable) or an internal error"),
            ),
        ]
        .into()
    }
}

/// `ok`, or 503 with the reason: shutting down, or storage that refuses
/// writes (a full disk, a store reopening after a failed write). A load
/// balancer or supervisor takes the node out while it is unhealthy; it
/// comes back by itself.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "The node takes traffic", body = String, content_type = "text/plain"), (status = 503, description = "Shutting down, or storage refuses writes; the reason", body = String, content_type = "text/plain"), Errors)
)]
async fn healthz(State(server): State<ChatServer>) -> Response {
    if server.is_shutting_down() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match server.health() {
        chat_core::Health::Ok => (StatusCode::OK, "ok").into_response(),
        other => {
            let reason = match other {
                chat_core::Health::Unavailable(why) => why,
                _ => "unhealthy".to_owned(),
            };
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("storage unavailable: {reason}"),
            )
                .into_response()
        }
    }
}

/// The peer's address, when the router is served by [`crate::serve`] (or
/// by a host that adds axum's `ConnectInfo<SocketAddr>`).
pub(crate) struct Peer(Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

/// Counts a throttled attempt.
fn throttled(server: &ChatServer, t: Throttled) -> HttpError {
    server
        .inner
        .stats
        .rate_limited
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    t.into()
}

#[utoipa::path(
    post,
    path = "/v1/signup",
    tag = "accounts",
    request_body = SignupRequest,
    responses((status = 201, description = "Signed up and logged in", body = AuthResponse), Errors)
)]
async fn signup(
    State(server): State<ChatServer>,
    Peer(peer): Peer,
    Body(req): Body<SignupRequest>,
) -> Result<(StatusCode, Json<AuthResponse>), HttpError> {
    let limits = &server.inner.auth_limits;
    limits.address(peer).map_err(|t| throttled(&server, t))?;
    validate_username(&req.username).map_err(wire)?;
    if !(8..=1024).contains(&req.password.len()) {
        return Err(err(ErrorCode::InvalidInput, "password must be 8 to 1,024 bytes").into());
    }
    let display_name = req.display_name.unwrap_or_else(|| req.username.clone());
    validate_name(&display_name, "display name").map_err(wire)?;
    let hash = server.inner.hashing.hash(req.password).await?;
    let user = server
        .inner
        .directory
        .create_user(UserRecord {
            user: User {
                id: UserId::new_random(),
                username: req.username,
                profile: Profile {
                    display_name,
                    about: String::new(),
                },
                created_at: server.now(),
            },
            password_hash: hash,
        })
        .await
        .map_err(wire)?;
    Ok((StatusCode::CREATED, Json(server.log_in(user).await?)))
}

#[utoipa::path(
    post,
    path = "/v1/login",
    tag = "accounts",
    request_body = LoginRequest,
    responses((status = 200, description = "Logged in", body = AuthResponse), Errors)
)]
async fn login(
    State(server): State<ChatServer>,
    Peer(peer): Peer,
    Body(req): Body<LoginRequest>,
) -> Result<Json<AuthResponse>, HttpError> {
    let limits = &server.inner.auth_limits;
    limits.address(peer).map_err(|t| throttled(&server, t))?;
    limits
        .username(&req.username)
        .map_err(|t| throttled(&server, t))?;
    let record = server
        .inner
        .directory
        .user_by_name(&req.username)
        .await
        .map_err(wire)?;
    // An unknown username is checked against a decoy hash: the answer
    // takes as long as for a wrong password.
    let hash = record.as_ref().map(|r| r.password_hash.clone());
    let ok = server.inner.hashing.verify(req.password, hash).await?;
    match record {
        Some(r) if ok => Ok(Json(server.log_in(r.user).await?)),
        _ => Err(err(ErrorCode::Unauthorized, "invalid username or password").into()),
    }
}

#[utoipa::path(
    post,
    path = "/v1/refresh",
    tag = "accounts",
    request_body = RefreshRequest,
    responses((status = 200, description = "New tokens for the same session", body = AuthResponse), Errors)
)]
async fn refresh(
    State(server): State<ChatServer>,
    Body(req): Body<RefreshRequest>,
) -> HttpResult<Json<AuthResponse>> {
    Ok(Json(server.refresh(&req.refresh_token).await?))
}

#[utoipa::path(
    post,
    path = "/v1/logout",
    tag = "accounts",
    responses((status = 204, description = "This session's tokens are refused from now on"), Errors),
    security(("bearer" = []))
)]
async fn logout(
    State(server): State<ChatServer>,
    CallerToken(claims): CallerToken,
) -> HttpResult<StatusCode> {
    server.log_out(&claims).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    path = "/v1/logout/all",
    tag = "accounts",
    responses((status = 204, description = "Every session's tokens are refused from now on"), Errors),
    security(("bearer" = []))
)]
async fn logout_all(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<StatusCode> {
    server.log_out_everywhere(me).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn load_user(server: &ChatServer, id: UserId) -> ApiResult<User> {
    server
        .inner
        .directory
        .user(id)
        .await
        .map_err(wire)?
        .ok_or_else(|| err(ErrorCode::NotFound, "user not found"))
}

/// The users of `ids` that exist, in order.
async fn load_users(
    server: &ChatServer,
    ids: impl IntoIterator<Item = UserId>,
) -> ApiResult<Vec<User>> {
    let mut users = Vec::new();
    for id in ids {
        if let Some(u) = server.inner.directory.user(id).await.map_err(wire)? {
            users.push(u);
        }
    }
    Ok(users)
}

#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "profile",
    responses((status = 200, description = "The caller", body = User), Errors),
    security(("bearer" = []))
)]
async fn me(State(server): State<ChatServer>, Caller(me): Caller) -> HttpResult<Json<User>> {
    Ok(Json(load_user(&server, me).await?))
}

#[utoipa::path(
    patch,
    path = "/v1/me",
    tag = "profile",
    request_body = UpdateProfileRequest,
    responses((status = 200, description = "The caller, updated", body = User), Errors),
    security(("bearer" = []))
)]
async fn update_me(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Body(req): Body<UpdateProfileRequest>,
) -> HttpResult<Json<User>> {
    let mut profile = load_user(&server, me).await?.profile;
    if let Some(name) = req.display_name {
        validate_name(&name, "display name").map_err(wire)?;
        profile.display_name = name;
    }
    if let Some(about) = req.about {
        validate_about(&about).map_err(wire)?;
        profile.about = about;
    }
    let user = server
        .inner
        .directory
        .update_profile(me, profile)
        .await
        .map_err(wire)?;
    Ok(Json(user))
}

#[utoipa::path(
    get,
    path = "/v1/me/privacy",
    tag = "profile",
    responses((status = 200, description = "The caller's privacy settings", body = Privacy), Errors),
    security(("bearer" = []))
)]
async fn privacy(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<Json<Privacy>> {
    Ok(Json(
        server.inner.directory.privacy(me).await.map_err(wire)?,
    ))
}

#[utoipa::path(
    patch,
    path = "/v1/me/privacy",
    tag = "profile",
    request_body = UpdatePrivacyRequest,
    responses((status = 200, description = "The settings, updated", body = Privacy), Errors),
    security(("bearer" = []))
)]
async fn update_privacy(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Body(req): Body<UpdatePrivacyRequest>,
) -> HttpResult<Json<Privacy>> {
    let directory = &server.inner.directory;
    let mut privacy = directory.privacy(me).await.map_err(wire)?;
    if let Some(who) = req.who_may_add {
        privacy.who_may_add = who;
    }
    if let Some(hide) = req.hide_last_seen {
        privacy.hide_last_seen = hide;
    }
    Ok(Json(
        directory.set_privacy(me, privacy).await.map_err(wire)?,
    ))
}

#[utoipa::path(
    get,
    path = "/v1/users/{id}",
    tag = "users",
    params(("id" = UserId, Path, description = "A user id")),
    responses((status = 200, description = "The user", body = User), Errors),
    security(("bearer" = []))
)]
async fn user(
    State(server): State<ChatServer>,
    Caller(_): Caller,
    P(id): P<UserId>,
) -> HttpResult<Json<User>> {
    Ok(Json(load_user(&server, id).await?))
}

#[utoipa::path(
    get,
    path = "/v1/users/by-name/{username}",
    tag = "users",
    params(("username" = String, Path, description = "A username")),
    responses((status = 200, description = "The user", body = User), Errors),
    security(("bearer" = []))
)]
async fn user_by_name(
    State(server): State<ChatServer>,
    Caller(_): Caller,
    P(username): P<String>,
) -> HttpResult<Json<User>> {
    let record = server
        .inner
        .directory
        .user_by_name(&username)
        .await
        .map_err(wire)?
        .ok_or_else(|| err(ErrorCode::NotFound, "user not found"))?;
    Ok(Json(record.user))
}

#[utoipa::path(
    get,
    path = "/v1/friends",
    tag = "friends",
    responses((status = 200, description = "The caller's friends", body = UserList), Errors),
    security(("bearer" = []))
)]
async fn friends(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<Json<UserList>> {
    let ids = server.inner.directory.friends(me).await.map_err(wire)?;
    Ok(Json(UserList {
        users: load_users(&server, ids).await?,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/friends/requests",
    tag = "friends",
    responses((status = 200, description = "Pending requests, both ways", body = FriendRequests), Errors),
    security(("bearer" = []))
)]
async fn friend_requests(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<Json<FriendRequests>> {
    let requests = server
        .inner
        .directory
        .friend_requests(me)
        .await
        .map_err(wire)?;
    let mut answer = FriendRequests {
        incoming: Vec::new(),
        outgoing: Vec::new(),
    };
    for r in requests {
        let (other, list) = if r.to == me {
            (r.from, &mut answer.incoming)
        } else {
            (r.to, &mut answer.outgoing)
        };
        if let Some(user) = server.inner.directory.user(other).await.map_err(wire)? {
            list.push(PendingFriend {
                user,
                created_at: r.created_at,
            });
        }
    }
    Ok(Json(answer))
}

/// `PUT /v1/friends/{user}`: asks `user` to be friends, or accepts their
/// request; tells them live either way.
#[utoipa::path(
    put,
    path = "/v1/friends/{id}",
    tag = "friends",
    params(("id" = UserId, Path, description = "A user id")),
    responses((status = 200, description = "Asked, or accepted their request", body = FriendAnswer), Errors),
    security(("bearer" = []))
)]
async fn add_friend(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<UserId>,
) -> HttpResult<Json<FriendAnswer>> {
    // A user who blocked the caller hears nothing from them, friend
    // requests included (the same `blocked` code as their direct
    // messages): the directory refuses it, atomically with the request.
    let outcome = server
        .inner
        .directory
        .request_friend(me, id, server.now(), &server.config().limits)
        .await
        .map_err(wire)?;
    let status = match outcome {
        FriendOutcome::Requested => {
            let from = load_user(&server, me).await?;
            server.notify(&[id], Event::FriendRequest { from }).await;
            FriendStatus::Requested
        }
        FriendOutcome::Accepted => {
            let friend = load_user(&server, me).await?;
            server.notify(&[id], Event::FriendAccepted { friend }).await;
            FriendStatus::Friends
        }
        FriendOutcome::AlreadyRequested => FriendStatus::Requested,
        FriendOutcome::AlreadyFriends => FriendStatus::Friends,
    };
    Ok(Json(FriendAnswer { status }))
}

/// `DELETE /v1/friends/{user}`: unfriends, declines their request, or
/// cancels the caller's: whatever there is between the two ends.
#[utoipa::path(
    delete,
    path = "/v1/friends/{id}",
    tag = "friends",
    params(("id" = UserId, Path, description = "A user id")),
    responses((status = 204, description = "Unfriended, declined or cancelled"), Errors),
    security(("bearer" = []))
)]
async fn remove_friend(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<UserId>,
) -> HttpResult<StatusCode> {
    server
        .inner
        .directory
        .remove_friend(me, id)
        .await
        .map_err(wire)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/blocks`: the users the caller blocks.
#[utoipa::path(
    get,
    path = "/v1/blocks",
    tag = "blocks",
    responses((status = 200, description = "The users the caller blocks", body = UserList), Errors),
    security(("bearer" = []))
)]
async fn blocked(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<Json<UserList>> {
    let ids = server.inner.directory.blocked(me).await.map_err(wire)?;
    Ok(Json(UserList {
        users: load_users(&server, ids).await?,
    }))
}

/// `PUT /v1/blocks/{user}`: blocks `user` (idempotent). They can no longer
/// open a direct channel with the caller nor send in it, and see no
/// presence of the caller; groups are not affected.
#[utoipa::path(
    put,
    path = "/v1/blocks/{id}",
    tag = "blocks",
    params(("id" = UserId, Path, description = "A user id")),
    responses((status = 204, description = "Blocked"), Errors),
    security(("bearer" = []))
)]
async fn block(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<UserId>,
) -> HttpResult<StatusCode> {
    server.inner.directory.block(me, id).await.map_err(wire)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/blocks/{user}`: unblocks `user` (idempotent).
#[utoipa::path(
    delete,
    path = "/v1/blocks/{id}",
    tag = "blocks",
    params(("id" = UserId, Path, description = "A user id")),
    responses((status = 204, description = "Unblocked"), Errors),
    security(("bearer" = []))
)]
async fn unblock(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<UserId>,
) -> HttpResult<StatusCode> {
    server.inner.directory.unblock(me, id).await.map_err(wire)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/channels",
    tag = "channels",
    params(ChannelsQuery),
    responses((status = 200, description = "A page of the caller's channels, by id", body = ChannelList), Errors),
    security(("bearer" = []))
)]
async fn channels(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Q(q): Q<ChannelsQuery>,
) -> HttpResult<Json<ChannelList>> {
    let limit = q
        .limit
        .map_or(50, |l| l as usize)
        .clamp(1, MAX_CHANNEL_PAGE);
    // One more than asked tells whether another page follows.
    let mut channels = server
        .inner
        .directory
        .channels_of(me, q.after, limit + 1)
        .await
        .map_err(wire)?;
    let next = if channels.len() > limit {
        channels.truncate(limit);
        channels.last().map(|c| c.id)
    } else {
        None
    };
    let summaries = server.channel_summaries(me, &channels).await?;
    Ok(Json(ChannelList {
        channels,
        next,
        summaries,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/channels/{id}",
    tag = "channels",
    params(("id" = ChannelId, Path, description = "A channel id")),
    responses((status = 200, description = "The channel (members only)", body = Channel), Errors),
    security(("bearer" = []))
)]
async fn channel(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<ChannelId>,
) -> HttpResult<Json<Channel>> {
    Ok(Json(server.member_channel(me, id).await?))
}

/// `POST /v1/channels/direct`: the direct channel with a user, if it
/// exists or their settings let the caller open it.
#[utoipa::path(
    post,
    path = "/v1/channels/direct",
    tag = "channels",
    request_body = OpenDirectRequest,
    responses((status = 200, description = "The direct channel of the pair", body = Channel), Errors),
    security(("bearer" = []))
)]
async fn open_direct(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Body(req): Body<OpenDirectRequest>,
) -> HttpResult<Json<Channel>> {
    if req.user == me {
        return Err(err(
            ErrorCode::InvalidInput,
            "a direct channel needs another user",
        )
        .into());
    }
    // A user who blocks the caller takes no direct channel from them, not
    // even one that exists.
    if server.blocks(req.user, me).await? {
        return Err(err(ErrorCode::Blocked, "this user has blocked you").into());
    }
    // Once opened, it stays open for both.
    if let Ok(existing) = server
        .member_channel(me, ChannelId::direct(me, req.user))
        .await
    {
        return Ok(Json(existing));
    }
    if !server.may_add(me, req.user).await? {
        return Err(err(
            ErrorCode::Forbidden,
            "this user's privacy settings do not let you open a direct channel: \
             send a friend request first",
        )
        .into());
    }
    let channel = server
        .inner
        .directory
        .create_channel(
            Channel::direct(me, req.user, server.now()),
            &server.config().limits,
        )
        .await
        .map_err(wire)?;
    Ok(Json(channel))
}

/// `POST /v1/groups`: a group owned by the caller; each listed member is
/// added or invited as `PUT /v1/groups/{id}/members/{user}` would.
#[utoipa::path(
    post,
    path = "/v1/groups",
    tag = "groups",
    request_body = CreateGroupRequest,
    responses((status = 201, description = "The group, with the caller as owner", body = GroupChange), Errors),
    security(("bearer" = []))
)]
async fn create_group(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Body(req): Body<CreateGroupRequest>,
) -> HttpResult<(StatusCode, Json<GroupChange>)> {
    let name = req.name.trim().to_owned();
    validate_name(&name, "group name").map_err(wire)?;
    let mut members = req.members;
    members.retain(|m| *m != me);
    members.sort();
    members.dedup();
    let max = server.config().limits.group_members;
    if members.len() + 1 > max {
        return Err(err(
            ErrorCode::LimitExceeded,
            format!("a group has at most {max} members"),
        )
        .into());
    }
    // Every member must exist before anything is written.
    for m in &members {
        load_user(&server, *m).await?;
    }
    let mut channel = server
        .inner
        .directory
        .create_channel(
            Channel {
                id: ChannelId::new_random(),
                kind: ChannelKind::Group,
                name,
                owner: Some(me),
                members: vec![me],
                created_at: server.now(),
            },
            &server.config().limits,
        )
        .await
        .map_err(wire)?;
    let mut invited = Vec::new();
    let mut refused = Vec::new();
    for m in members {
        match server.add_or_invite(me, &channel, m).await {
            Ok(Joined::Added(updated)) => channel = updated,
            Ok(Joined::Invited) => invited.push(m),
            Err(e) => {
                tracing::debug!(code = ?e.code, "a new group's member was neither added nor invited");
                refused.push(m);
            }
        }
    }
    Ok((
        StatusCode::CREATED,
        Json(GroupChange {
            channel,
            invited,
            refused,
        }),
    ))
}

/// The group, if `me` is its owner (or, with `leaving`, a member): the
/// same `not_found` as for a missing group when `me` is no member.
async fn group_for_change(
    server: &ChatServer,
    me: UserId,
    id: ChannelId,
    leaving: bool,
) -> ApiResult<Channel> {
    let channel = server.member_channel(me, id).await?;
    if channel.owner != Some(me) && !leaving {
        return Err(err(
            ErrorCode::Forbidden,
            "only the group's owner can change its members",
        ));
    }
    Ok(channel)
}

/// `PUT /v1/groups/{id}/members/{user}` (owner only): adds the user, or
/// invites them when their settings ask for consent (202).
#[utoipa::path(
    put,
    path = "/v1/groups/{id}/members/{user}",
    tag = "groups",
    params(("id" = ChannelId, Path, description = "A channel id"), ("user" = UserId, Path, description = "The member")),
    responses((status = 200, description = "Added", body = GroupChange), (status = 202, description = "Invited", body = GroupChange), Errors),
    security(("bearer" = []))
)]
async fn add_member(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P((id, user)): P<(ChannelId, UserId)>,
) -> HttpResult<(StatusCode, Json<GroupChange>)> {
    let group = group_for_change(&server, me, id, false).await?;
    let (status, channel, invited) = match server.add_or_invite(me, &group, user).await? {
        Joined::Added(channel) => (StatusCode::OK, channel, Vec::new()),
        Joined::Invited => (StatusCode::ACCEPTED, group, vec![user]),
    };
    Ok((
        status,
        Json(GroupChange {
            channel,
            invited,
            refused: Vec::new(),
        }),
    ))
}

/// `DELETE /v1/groups/{id}/members/{user}`: the owner removes a member or
/// withdraws an invitation; a member leaves.
#[utoipa::path(
    delete,
    path = "/v1/groups/{id}/members/{user}",
    tag = "groups",
    params(("id" = ChannelId, Path, description = "A channel id"), ("user" = UserId, Path, description = "The member")),
    responses((status = 200, description = "The group after the change", body = Channel), Errors),
    security(("bearer" = []))
)]
async fn remove_member(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P((id, user)): P<(ChannelId, UserId)>,
) -> HttpResult<Json<Channel>> {
    group_for_change(&server, me, id, user == me).await?;
    let directory = &server.inner.directory;
    directory.remove_invitation(id, user).await.map_err(wire)?;
    let channel = directory.remove_member(id, user).await.map_err(wire)?;
    Ok(Json(channel))
}

#[utoipa::path(
    get,
    path = "/v1/invitations",
    tag = "groups",
    responses((status = 200, description = "Pending invitations, both ways", body = InvitationList), Errors),
    security(("bearer" = []))
)]
async fn invitations(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<Json<InvitationList>> {
    let (incoming, outgoing) = server
        .inner
        .directory
        .invitations(me)
        .await
        .map_err(wire)?
        .into_iter()
        .partition(|i| i.invitee == me);
    Ok(Json(InvitationList { incoming, outgoing }))
}

/// `PUT /v1/invitations/{channel}`: joins the group the caller is invited
/// to. `not_found` without an invitation, whether or not the group exists.
#[utoipa::path(
    put,
    path = "/v1/invitations/{id}",
    tag = "groups",
    params(("id" = ChannelId, Path, description = "A channel id")),
    responses((status = 200, description = "Joined the group", body = Channel), Errors),
    security(("bearer" = []))
)]
async fn accept_invitation(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<ChannelId>,
) -> HttpResult<Json<Channel>> {
    let channel = server
        .inner
        .directory
        .accept_invitation(id, me, &server.config().limits)
        .await
        .map_err(|e| match e {
            chat_core::Error::NotFound { .. } => err(ErrorCode::NotFound, "invitation not found"),
            other => wire(other),
        })?;
    Ok(Json(channel))
}

/// `DELETE /v1/invitations/{channel}`: declines (idempotent).
#[utoipa::path(
    delete,
    path = "/v1/invitations/{id}",
    tag = "groups",
    params(("id" = ChannelId, Path, description = "A channel id")),
    responses((status = 204, description = "Declined"), Errors),
    security(("bearer" = []))
)]
async fn decline_invitation(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<ChannelId>,
) -> HttpResult<StatusCode> {
    server
        .inner
        .directory
        .remove_invitation(id, me)
        .await
        .map_err(wire)?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/channels/{id}/messages",
    tag = "channels",
    params(("id" = ChannelId, Path, description = "A channel id"), HistoryQuery),
    responses((status = 200, description = "A page of history (members only)", body = MessagePage), Errors),
    security(("bearer" = []))
)]
async fn history(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<ChannelId>,
    Q(q): Q<HistoryQuery>,
) -> HttpResult<Json<MessagePage>> {
    let page = Page {
        before: q.before,
        after: q.after,
        limit: clamp_limit(q.limit, 50),
        max_bytes: usize::MAX,
    };
    let (messages, has_more) = server.history(me, id, page).await?;
    Ok(Json(MessagePage { messages, has_more }))
}

#[utoipa::path(
    put,
    path = "/v1/devices/{id}",
    tag = "devices",
    request_body = RegisterDeviceRequest,
    params(("id" = DeviceId, Path, description = "The device id")),
    responses((status = 200, description = "The device", body = Device), Errors),
    security(("bearer" = []))
)]
async fn register_device(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<DeviceId>,
    Body(req): Body<RegisterDeviceRequest>,
) -> HttpResult<Json<Device>> {
    if req
        .push_token
        .as_ref()
        .is_some_and(|t| t.is_empty() || t.len() > MAX_PUSH_TOKEN)
    {
        return Err(err(
            ErrorCode::InvalidInput,
            "push token must be 1 to 4,096 bytes",
        )
        .into());
    }
    let device = server
        .inner
        .directory
        .register_device(
            Device {
                id,
                user: me,
                platform: req.platform,
                push_token: req.push_token,
                created_at: server.now(),
            },
            &server.config().limits,
        )
        .await
        .map_err(wire)?;
    Ok(Json(device))
}

#[utoipa::path(
    get,
    path = "/v1/presence",
    tag = "presence",
    params(PresenceQuery),
    responses((status = 200, description = "Presence as the caller may see it", body = PresenceList), Errors),
    security(("bearer" = []))
)]
async fn presence(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Q(q): Q<PresenceQuery>,
) -> HttpResult<Json<PresenceList>> {
    let users = q
        .users
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse::<UserId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            err(
                ErrorCode::InvalidInput,
                "users must be comma-separated user ids",
            )
        })?;
    Ok(Json(PresenceList {
        users: server.presence_of(me, &users).await?,
    }))
}

/// `GET /v1/route`: where to open the WebSocket, for authenticated users
/// only, and nothing else about the deployment.
#[utoipa::path(
    get,
    path = "/v1/route",
    tag = "presence",
    params(RouteQuery),
    responses((status = 200, description = "Where to open the WebSocket", body = RouteResponse), Errors),
    security(("bearer" = []))
)]
async fn route(
    State(server): State<ChatServer>,
    Caller(_): Caller,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Q(q): Q<RouteQuery>,
) -> HttpResult<Json<RouteResponse>> {
    if !server.is_advertised() {
        // Mounted by a host without `advertise`: this server is the
        // deployment, reached where the client reached it.
        if server.is_shutting_down() || !server.health().is_ok() {
            return Err(err(ErrorCode::Unavailable, "no chat server is available").into());
        }
        let ws_url = match &server.config().public_ws_url {
            Some(url) => url.clone(),
            None => ws_url_as_reached(&uri, &headers)?,
        };
        return Ok(Json(RouteResponse { ws_url }));
    }
    let chosen = server.route(q.region.as_deref()).await?;
    Ok(Json(RouteResponse {
        ws_url: chosen.ws_url,
    }))
}

/// The WebSocket URL of this server as the client reached it: the host it
/// asked for, the path prefix the router is mounted under, and `wss` when
/// the request came over HTTPS (said by a proxy's `X-Forwarded-Proto` or
/// `Forwarded`, or by the request's own URI).
fn ws_url_as_reached(uri: &Uri, headers: &HeaderMap) -> Result<String, ApiError> {
    let bad_host = || {
        ApiError(err(
            ErrorCode::InvalidInput,
            "missing or invalid Host header",
        ))
    };
    let host = match uri.authority() {
        Some(authority) => authority.as_str().to_owned(),
        None => {
            let value = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .ok_or_else(bad_host)?;
            // Only a well-formed authority (no path, no user info) goes
            // into the answer.
            let authority: Authority = value.parse().map_err(|_| bad_host())?;
            if authority.as_str().contains('@') {
                return Err(bad_host());
            }
            authority.as_str().to_owned()
        }
    };
    let https = uri.scheme_str() == Some("https")
        || headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',')
                    .next()
                    .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
            })
        || headers
            .get(axum::http::header::FORWARDED)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(',').next().is_some_and(|first| {
                    first.split(';').any(|pair| {
                        pair.trim().split_once('=').is_some_and(|(k, v)| {
                            k.trim().eq_ignore_ascii_case("proto")
                                && v.trim().trim_matches('"').eq_ignore_ascii_case("https")
                        })
                    })
                })
            });
    let scheme = if https { "wss" } else { "ws" };
    let prefix = uri.path().strip_suffix("/v1/route").unwrap_or("");
    Ok(format!("{scheme}://{host}{prefix}/v1/ws"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reached(uri: &str, headers: &[(&str, &str)]) -> Result<String, ApiError> {
        let uri: Uri = uri.parse().unwrap_or_else(|e| panic!("{uri}: {e}"));
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
                v.parse().unwrap_or_else(|e| panic!("{e}")),
            );
        }
        ws_url_as_reached(&uri, &map)
    }

    #[test]
    fn the_websocket_url_follows_the_request() {
        let ok = |r: Result<String, ApiError>| r.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            ok(reached("/v1/route", &[("host", "chat.example.com")])),
            "ws://chat.example.com/v1/ws"
        );
        assert_eq!(
            ok(reached(
                "/app/chat/v1/route?region=eu",
                &[("host", "10.0.0.5:8080")]
            )),
            "ws://10.0.0.5:8080/app/chat/v1/ws",
            "under the prefix the router is mounted at"
        );
        assert_eq!(
            ok(reached(
                "/v1/route",
                &[("host", "chat.example.com"), ("x-forwarded-proto", "https")]
            )),
            "wss://chat.example.com/v1/ws"
        );
        assert_eq!(
            ok(reached(
                "/v1/route",
                &[
                    ("host", "chat.example.com"),
                    ("forwarded", "for=1.2.3.4;proto=https")
                ]
            )),
            "wss://chat.example.com/v1/ws"
        );
        assert_eq!(
            ok(reached("https://chat.example.com/v1/route", &[])),
            "wss://chat.example.com/v1/ws",
            "an absolute request URI (HTTP/2) names its own authority"
        );
        for bad in ["", "a b", "user@evil.example", "x/y"] {
            assert!(reached("/v1/route", &[("host", bad)]).is_err(), "{bad:?}");
        }
        assert!(reached("/v1/route", &[]).is_err(), "no host at all");
    }
}
