//! The stateless HTTP API. Every handler is a thin mapping onto the directory
//! and [`ChatServer`]; any server of a deployment can answer any call.

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chat_core::api::{
    AuthResponse, ChannelList, CreateGroupRequest, ErrorBody, HistoryQuery, LoginRequest,
    MessagePage, OpenDirectRequest, PresenceList, PresenceQuery, RegisterDeviceRequest, RouteQuery,
    RouteResponse, SignupRequest, UpdateProfileRequest, UserList,
};
use chat_core::protocol::{ErrorCode, WireError};
use chat_core::types::validate_username;
use chat_core::{
    Channel, ChannelId, ChannelKind, Device, DeviceId, Page, Profile, User, UserId, UserRecord,
};
use serde::de::DeserializeOwned;

use crate::auth::Claims;
use crate::server::{clamp_limit, err, wire, ApiResult, ChatServer};

/// Longest display name or group name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Longest "about" text, in characters.
const MAX_ABOUT_CHARS: usize = 1_000;
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

type HttpResult<T> = Result<T, ApiError>;

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
pub(crate) struct Q<T>(T);

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
pub(crate) struct P<T>(T);

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

/// The authenticated caller.
pub(crate) struct Caller(UserId);

impl FromRequestParts<ChatServer> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, server: &ChatServer) -> Result<Self, ApiError> {
        bearer(&parts.headers)
            .and_then(|t| server.inner.tokens.verify(&t, server.now()))
            .map(|c| Caller(c.sub))
            .ok_or_else(|| {
                ApiError(err(
                    ErrorCode::Unauthorized,
                    "missing, invalid or expired bearer token",
                ))
            })
    }
}

/// The HTTP routes plus the WebSocket endpoint, bound to `server`.
pub(crate) fn routes(server: ChatServer) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/signup", post(signup))
        .route("/v1/login", post(login))
        .route("/v1/me", get(me).patch(update_me))
        .route("/v1/users/{id}", get(user))
        .route("/v1/users/by-name/{username}", get(user_by_name))
        .route("/v1/friends", get(friends))
        .route("/v1/friends/{id}", put(add_friend).delete(remove_friend))
        .route("/v1/channels", get(channels))
        .route("/v1/channels/direct", post(open_direct))
        .route("/v1/channels/{id}", get(channel))
        .route("/v1/channels/{id}/messages", get(history))
        .route("/v1/groups", post(create_group))
        .route(
            "/v1/groups/{id}/members/{user}",
            put(add_member).delete(remove_member),
        )
        .route("/v1/devices/{id}", put(register_device))
        .route("/v1/presence", get(presence))
        .route("/v1/route", get(route))
        .route("/v1/ws", get(crate::ws::upgrade))
        .with_state(server)
}

/// `ok`, or 503 with the reason: shutting down, or storage that refuses
/// writes (a full disk, a store reopening after a failed write). A load
/// balancer or supervisor takes the node out while it is unhealthy; it
/// comes back by itself.
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

fn check_chars(value: &str, max: usize, what: &str) -> ApiResult<()> {
    if value.chars().count() > max {
        return Err(err(
            ErrorCode::InvalidInput,
            format!("{what} is over {max} characters"),
        ));
    }
    Ok(())
}

/// Runs CPU-heavy password work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| err(ErrorCode::Internal, "password hashing failed"))
}

fn auth_response(server: &ChatServer, user: User) -> AuthResponse {
    let expires_at = server.now() + server.config().token_ttl.as_millis() as u64;
    let token = server.inner.tokens.issue(Claims {
        sub: user.id,
        exp: expires_at,
    });
    AuthResponse {
        token,
        expires_at,
        user,
    }
}

async fn signup(
    State(server): State<ChatServer>,
    Body(req): Body<SignupRequest>,
) -> HttpResult<(StatusCode, Json<AuthResponse>)> {
    validate_username(&req.username).map_err(wire)?;
    if !(8..=1024).contains(&req.password.len()) {
        return Err(err(ErrorCode::InvalidInput, "password must be 8 to 1,024 bytes").into());
    }
    let display_name = req.display_name.unwrap_or_else(|| req.username.clone());
    check_chars(&display_name, MAX_NAME_CHARS, "display name")?;
    let passwords = server.inner.passwords.clone();
    let password = req.password;
    let hash = blocking(move || passwords.hash(&password))
        .await?
        .map_err(wire)?;
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
    Ok((StatusCode::CREATED, Json(auth_response(&server, user))))
}

async fn login(
    State(server): State<ChatServer>,
    Body(req): Body<LoginRequest>,
) -> HttpResult<Json<AuthResponse>> {
    let record = server
        .inner
        .directory
        .user_by_name(&req.username)
        .await
        .map_err(wire)?;
    let passwords = server.inner.passwords.clone();
    let hash = record.as_ref().map(|r| r.password_hash.clone());
    let ok = blocking(move || hash.is_some_and(|h| passwords.verify(&req.password, &h))).await?;
    match record {
        Some(r) if ok => Ok(Json(auth_response(&server, r.user))),
        _ => Err(err(ErrorCode::Unauthorized, "invalid username or password").into()),
    }
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

async fn me(State(server): State<ChatServer>, Caller(me): Caller) -> HttpResult<Json<User>> {
    Ok(Json(load_user(&server, me).await?))
}

async fn update_me(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Body(req): Body<UpdateProfileRequest>,
) -> HttpResult<Json<User>> {
    let mut profile = load_user(&server, me).await?.profile;
    if let Some(name) = req.display_name {
        check_chars(&name, MAX_NAME_CHARS, "display name")?;
        profile.display_name = name;
    }
    if let Some(about) = req.about {
        check_chars(&about, MAX_ABOUT_CHARS, "about")?;
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

async fn user(
    State(server): State<ChatServer>,
    Caller(_): Caller,
    P(id): P<UserId>,
) -> HttpResult<Json<User>> {
    Ok(Json(load_user(&server, id).await?))
}

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

async fn friends(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<Json<UserList>> {
    let ids = server.inner.directory.friends(me).await.map_err(wire)?;
    let mut users = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(u) = server.inner.directory.user(id).await.map_err(wire)? {
            users.push(u);
        }
    }
    Ok(Json(UserList { users }))
}

async fn add_friend(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<UserId>,
) -> HttpResult<StatusCode> {
    server
        .inner
        .directory
        .add_friend(me, id)
        .await
        .map_err(wire)?;
    Ok(StatusCode::NO_CONTENT)
}

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

async fn channels(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<Json<ChannelList>> {
    let channels = server.inner.directory.channels_of(me).await.map_err(wire)?;
    Ok(Json(ChannelList { channels }))
}

async fn channel(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<ChannelId>,
) -> HttpResult<Json<Channel>> {
    Ok(Json(server.member_channel(me, id).await?))
}

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
    let channel = server
        .inner
        .directory
        .create_channel(Channel::direct(me, req.user, server.now()))
        .await
        .map_err(wire)?;
    Ok(Json(channel))
}

async fn create_group(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    Body(req): Body<CreateGroupRequest>,
) -> HttpResult<(StatusCode, Json<Channel>)> {
    let name = req.name.trim().to_owned();
    if name.is_empty() {
        return Err(err(ErrorCode::InvalidInput, "a group needs a name").into());
    }
    check_chars(&name, MAX_NAME_CHARS, "group name")?;
    let mut members = req.members;
    members.push(me);
    members.sort();
    members.dedup();
    let max = server.config().max_group_members;
    if members.len() > max {
        return Err(err(
            ErrorCode::LimitExceeded,
            format!("a group has at most {max} members"),
        )
        .into());
    }
    let channel = server
        .inner
        .directory
        .create_channel(Channel {
            id: ChannelId::new_random(),
            kind: ChannelKind::Group,
            name,
            owner: Some(me),
            members,
            created_at: server.now(),
        })
        .await
        .map_err(wire)?;
    Ok((StatusCode::CREATED, Json(channel)))
}

/// Only a group's owner changes its members, except that anyone may leave
/// (`leaving`).
async fn check_owner(
    server: &ChatServer,
    me: UserId,
    id: ChannelId,
    leaving: bool,
) -> ApiResult<()> {
    let channel = server.member_channel(me, id).await?;
    if channel.owner != Some(me) && !leaving {
        return Err(err(
            ErrorCode::Forbidden,
            "only the group's owner can change its members",
        ));
    }
    Ok(())
}

async fn add_member(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P((id, user)): P<(ChannelId, UserId)>,
) -> HttpResult<Json<Channel>> {
    check_owner(&server, me, id, false).await?;
    let channel = server
        .inner
        .directory
        .add_member(id, user, server.config().max_group_members)
        .await
        .map_err(wire)?;
    Ok(Json(channel))
}

async fn remove_member(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P((id, user)): P<(ChannelId, UserId)>,
) -> HttpResult<Json<Channel>> {
    check_owner(&server, me, id, user == me).await?;
    let channel = server
        .inner
        .directory
        .remove_member(id, user)
        .await
        .map_err(wire)?;
    Ok(Json(channel))
}

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
        .register_device(Device {
            id,
            user: me,
            platform: req.platform,
            push_token: req.push_token,
            created_at: server.now(),
        })
        .await
        .map_err(wire)?;
    Ok(Json(device))
}

async fn presence(
    State(server): State<ChatServer>,
    Caller(_): Caller,
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
        users: server.presence_of(&users).await?,
    }))
}

async fn route(
    State(server): State<ChatServer>,
    Q(q): Q<RouteQuery>,
) -> HttpResult<Json<RouteResponse>> {
    Ok(Json(RouteResponse {
        server: server.route(q.region.as_deref()).await?,
    }))
}
