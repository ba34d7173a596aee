//! The stateless HTTP API. Every handler is a thin mapping onto the directory
//! and [`ChatServer`]; any server of a deployment can answer any call.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
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

/// The claims of the caller's access token, checked against the directory.
async fn authenticated(parts: &Parts, server: &ChatServer) -> Result<Claims, ApiError> {
    let token = bearer(&parts.headers)
        .ok_or_else(|| err(ErrorCode::Unauthorized, "missing bearer token"))?;
    Ok(server.authenticate(&token, TokenKind::Access).await?)
}

/// The authenticated caller.
pub(crate) struct Caller(UserId);

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

/// The HTTP routes plus the WebSocket endpoint, bound to `server`.
pub(crate) fn routes(server: ChatServer) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/signup", post(signup))
        .route("/v1/login", post(login))
        .route("/v1/refresh", post(refresh))
        .route("/v1/logout", post(logout))
        .route("/v1/logout/all", post(logout_all))
        .route("/v1/me", get(me).patch(update_me))
        .route("/v1/me/privacy", get(privacy).patch(update_privacy))
        .route("/v1/users/{id}", get(user))
        .route("/v1/users/by-name/{username}", get(user_by_name))
        .route("/v1/friends", get(friends))
        .route("/v1/friends/requests", get(friend_requests))
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
        .route("/v1/invitations", get(invitations))
        .route(
            "/v1/invitations/{id}",
            put(accept_invitation).delete(decline_invitation),
        )
        .route("/v1/devices/{id}", put(register_device))
        .route("/v1/presence", get(presence))
        .route("/v1/route", get(route))
        .route(
            "/v1/ws",
            get(crate::ws::upgrade).route_layer(axum::middleware::from_fn_with_state(
                server.clone(),
                crate::origin::check,
            )),
        )
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
        .stats()
        .rate_limited
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    t.into()
}

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

async fn refresh(
    State(server): State<ChatServer>,
    Body(req): Body<RefreshRequest>,
) -> HttpResult<Json<AuthResponse>> {
    Ok(Json(server.refresh(&req.refresh_token).await?))
}

async fn logout(
    State(server): State<ChatServer>,
    CallerToken(claims): CallerToken,
) -> HttpResult<StatusCode> {
    server.log_out(&claims).await?;
    Ok(StatusCode::NO_CONTENT)
}

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

async fn privacy(
    State(server): State<ChatServer>,
    Caller(me): Caller,
) -> HttpResult<Json<Privacy>> {
    Ok(Json(
        server.inner.directory.privacy(me).await.map_err(wire)?,
    ))
}

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
    Ok(Json(UserList {
        users: load_users(&server, ids).await?,
    }))
}

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
async fn add_friend(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<UserId>,
) -> HttpResult<Json<FriendAnswer>> {
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
    Ok(Json(ChannelList { channels, next }))
}

async fn channel(
    State(server): State<ChatServer>,
    Caller(me): Caller,
    P(id): P<ChannelId>,
) -> HttpResult<Json<Channel>> {
    Ok(Json(server.member_channel(me, id).await?))
}

/// `POST /v1/channels/direct`: the direct channel with a user, if it
/// exists or their settings let the caller open it.
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
async fn route(
    State(server): State<ChatServer>,
    Caller(_): Caller,
    Q(q): Q<RouteQuery>,
) -> HttpResult<Json<RouteResponse>> {
    let chosen = server.route(q.region.as_deref()).await?;
    Ok(Json(RouteResponse {
        ws_url: chosen.ws_url,
    }))
}
