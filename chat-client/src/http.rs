//! The stateless HTTP API: accounts, profiles, friends, channels, history,
//! devices, presence and `route`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chat_core::api::{
    AuthResponse, ChannelList, CreateGroupRequest, ErrorBody, HistoryQuery, LoginRequest,
    MessagePage, OpenDirectRequest, PresenceList, RegisterDeviceRequest, RouteResponse,
    SignupRequest, UpdateProfileRequest, UserList,
};
use chat_core::protocol::{ErrorCode, WireError};
use chat_core::{
    Channel, ChannelId, Device, DeviceId, Platform, Presence, ServerInfo, User, UserId,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::{ConnectOptions, Connection};
use crate::error::{ClientError, Result};
use crate::store::CursorStore;

/// How long one HTTP call may take by default.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// An unauthenticated handle on the HTTP API of a chat deployment.
///
/// Cheap to clone (the connection pool is shared). [`ChatClient::signup`]
/// and [`ChatClient::login`] return a [`Session`], which makes the
/// authenticated calls.
#[derive(Debug, Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: Arc<str>,
}

impl ChatClient {
    /// A client for the API at `base_url` (e.g. `http://127.0.0.1:8080`),
    /// with a 30 s timeout per call.
    pub fn new(base_url: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_HTTP_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(ClientError::from)?;
        Self::with_http_client(base_url, http)
    }

    /// A client using a `reqwest::Client` you configured (timeouts, proxies,
    /// TLS if the feature is enabled).
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Result<Self> {
        let url = Url::parse(base_url)
            .map_err(|e| ClientError::Config(format!("invalid base URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Config(format!(
                "base URL {base_url:?} must be http:// or https://"
            )));
        }
        Ok(Self {
            http,
            base: Arc::from(base_url.trim_end_matches('/')),
        })
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /v1/signup`: creates an account and logs in.
    pub async fn signup(
        &self,
        username: &str,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<Session> {
        let body = SignupRequest {
            username: username.to_owned(),
            password: password.to_owned(),
            display_name: display_name.map(str::to_owned),
        };
        let auth: AuthResponse = self
            .call(self.request(Method::POST, "/v1/signup").json(&body))
            .await?;
        Ok(self.session(auth))
    }

    /// `POST /v1/login`.
    pub async fn login(&self, username: &str, password: &str) -> Result<Session> {
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        let auth: AuthResponse = self
            .call(self.request(Method::POST, "/v1/login").json(&body))
            .await?;
        Ok(self.session(auth))
    }

    /// A session from an earlier [`AuthResponse`] (a token kept between
    /// runs). No request is made; an expired token fails on first use with
    /// [`ErrorCode::Unauthorized`].
    pub fn session(&self, auth: AuthResponse) -> Session {
        Session {
            client: self.clone(),
            token: Arc::from(auth.token),
            expires_at: auth.expires_at,
            user: auth.user,
        }
    }

    /// A session from a bare token: asks the server who it belongs to
    /// (`GET /v1/me`). The expiry is unknown and reported as 0.
    pub async fn resume(&self, token: &str) -> Result<Session> {
        let user: User = self
            .call(self.request(Method::GET, "/v1/me").bearer_auth(token))
            .await?;
        Ok(self.session(AuthResponse {
            token: token.to_owned(),
            expires_at: 0,
            user,
        }))
    }

    /// `GET /v1/route`: the chat server to open a WebSocket to, preferring
    /// `region`.
    pub async fn route(&self, region: Option<&str>) -> Result<ServerInfo> {
        let mut req = self.request(Method::GET, "/v1/route");
        if let Some(region) = region {
            req = req.query(&[("region", region)]);
        }
        let route: RouteResponse = self.call(req).await?;
        Ok(route.server)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    /// Sends a request and decodes a JSON answer.
    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let resp = req.send().await?;
        let bytes = checked(resp).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::decode)
    }

    /// Sends a request whose answer has no body (204).
    async fn call_empty(&self, req: RequestBuilder) -> Result<()> {
        let resp = req.send().await?;
        checked(resp).await.map(drop)
    }
}

/// The body of a successful answer, or the error an unsuccessful one carries.
async fn checked(resp: Response) -> Result<Vec<u8>> {
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if status.is_success() {
        return Ok(bytes.to_vec());
    }
    match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => Err(ClientError::Api(body.error)),
        Err(_) => {
            let text = String::from_utf8_lossy(&bytes);
            let text: String = text.chars().take(200).collect();
            Err(ClientError::Api(WireError::new(
                code_for_status(status),
                format!("HTTP {status}: {text}"),
            )))
        }
    }
}

/// The error code best matching an HTTP status without an error body.
pub(crate) fn code_for_status(status: StatusCode) -> ErrorCode {
    match status.as_u16() {
        400 => ErrorCode::InvalidInput,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        404 => ErrorCode::NotFound,
        409 => ErrorCode::Conflict,
        413 => ErrorCode::MessageTooLarge,
        422 => ErrorCode::LimitExceeded,
        429 => ErrorCode::RateLimited,
        502..=504 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// An authenticated user: the token, the user, and every HTTP call that
/// needs them. Cheap to clone.
///
/// [`Session::connect`] opens the live WebSocket connection.
#[derive(Clone)]
pub struct Session {
    client: ChatClient,
    token: Arc<str>,
    expires_at: u64,
    user: User,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("base_url", &self.client.base_url())
            .field("user", &self.user.id)
            .field("username", &self.user.username)
            .field("expires_at", &self.expires_at)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Session {
    /// The unauthenticated client this session was made from.
    pub fn client(&self) -> &ChatClient {
        &self.client
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// When the token expires, Unix milliseconds (0 if unknown).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The logged-in user, as of log-in.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// The logged-in user's id.
    pub fn user_id(&self) -> UserId {
        self.user.id
    }

    fn authed(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, path).bearer_auth(&*self.token)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.client.call(self.authed(Method::GET, path)).await
    }

    async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.client.call(self.authed(method, path).json(body)).await
    }

    /// `GET /v1/me`: the logged-in user as stored now.
    pub async fn me(&self) -> Result<User> {
        self.get("/v1/me").await
    }

    /// `PATCH /v1/me`: changes the fields that are `Some`.
    pub async fn update_profile(&self, update: &UpdateProfileRequest) -> Result<User> {
        self.send_json(Method::PATCH, "/v1/me", update).await
    }

    /// `GET /v1/users/{id}`.
    pub async fn get_user(&self, id: UserId) -> Result<User> {
        self.get(&format!("/v1/users/{id}")).await
    }

    /// `GET /v1/users/by-name/{username}`: find a user by login name.
    pub async fn user_by_name(&self, username: &str) -> Result<User> {
        // Usernames are `a-z 0-9 _ - .`; anything else cannot exist, and must
        // not be spliced into the path unescaped.
        if let Err(e) = chat_core::types::validate_username(username) {
            return Err(ClientError::Api(chat_core::protocol::WireError::from(&e)));
        }
        self.get(&format!("/v1/users/by-name/{username}")).await
    }

    /// `GET /v1/friends`.
    pub async fn friends(&self) -> Result<Vec<User>> {
        let list: UserList = self.get("/v1/friends").await?;
        Ok(list.users)
    }

    /// `PUT /v1/friends/{user}`: befriends `user` (mutual, idempotent).
    pub async fn add_friend(&self, user: UserId) -> Result<()> {
        self.client
            .call_empty(self.authed(Method::PUT, &format!("/v1/friends/{user}")))
            .await
    }

    /// `DELETE /v1/friends/{user}`.
    pub async fn remove_friend(&self, user: UserId) -> Result<()> {
        self.client
            .call_empty(self.authed(Method::DELETE, &format!("/v1/friends/{user}")))
            .await
    }

    /// `POST /v1/channels/direct`: the direct channel with `user`, created
    /// on first use (the same channel every time for the same pair).
    pub async fn open_direct(&self, user: UserId) -> Result<Channel> {
        self.send_json(
            Method::POST,
            "/v1/channels/direct",
            &OpenDirectRequest { user },
        )
        .await
    }

    /// `POST /v1/groups`: a group owned by the caller with `members` besides.
    pub async fn create_group(&self, name: &str, members: &[UserId]) -> Result<Channel> {
        let body = CreateGroupRequest {
            name: name.to_owned(),
            members: members.to_vec(),
        };
        self.send_json(Method::POST, "/v1/groups", &body).await
    }

    /// `PUT /v1/groups/{channel}/members/{user}` (owner only).
    pub async fn add_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        self.client
            .call(self.authed(Method::PUT, &format!("/v1/groups/{channel}/members/{user}")))
            .await
    }

    /// `DELETE /v1/groups/{channel}/members/{user}` (the owner, or the
    /// member leaving).
    pub async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        self.client
            .call(self.authed(
                Method::DELETE,
                &format!("/v1/groups/{channel}/members/{user}"),
            ))
            .await
    }

    /// `GET /v1/channels`: the caller's channels.
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let list: ChannelList = self.get("/v1/channels").await?;
        Ok(list.channels)
    }

    /// `GET /v1/channels/{id}` (members only).
    pub async fn channel(&self, id: ChannelId) -> Result<Channel> {
        self.get(&format!("/v1/channels/{id}")).await
    }

    /// `GET /v1/channels/{id}/messages`: a page of history, ascending. With
    /// `after`: the oldest `limit` messages above it; without: the newest
    /// `limit` below `before` (or overall).
    pub async fn history(&self, channel: ChannelId, query: &HistoryQuery) -> Result<MessagePage> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if let Some(before) = query.before {
            params.push(("before", before.to_string()));
        }
        if let Some(after) = query.after {
            params.push(("after", after.to_string()));
        }
        if let Some(limit) = query.limit {
            params.push(("limit", limit.to_string()));
        }
        let req = self
            .authed(Method::GET, &format!("/v1/channels/{channel}/messages"))
            .query(&params);
        self.client.call(req).await
    }

    /// `PUT /v1/devices/{device}`: registers (or updates) a device.
    pub async fn register_device(
        &self,
        device: DeviceId,
        platform: Platform,
        push_token: Option<&str>,
    ) -> Result<Device> {
        let body = RegisterDeviceRequest {
            platform,
            push_token: push_token.map(str::to_owned),
        };
        self.send_json(Method::PUT, &format!("/v1/devices/{device}"), &body)
            .await
    }

    /// `GET /v1/presence?users=...`: presence of `users`, in order.
    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<Presence>> {
        let list = users
            .iter()
            .map(UserId::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let req = self
            .authed(Method::GET, "/v1/presence")
            .query(&[("users", list)]);
        let answer: PresenceList = self.client.call(req).await?;
        Ok(answer.users)
    }

    /// `GET /v1/route`: the chat server to connect to, preferring `region`.
    pub async fn route(&self, region: Option<&str>) -> Result<ServerInfo> {
        self.client.route(region).await
    }

    /// Opens the live connection for `device`: see [`Connection::connect`].
    pub async fn connect(
        &self,
        device: DeviceId,
        store: Arc<dyn CursorStore>,
        options: ConnectOptions,
    ) -> Result<Connection> {
        Connection::connect(self, device, store, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_validated_and_normalised() {
        let c = ChatClient::new("http://127.0.0.1:8080/").unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:8080");
        assert!(matches!(
            ChatClient::new("not a url"),
            Err(ClientError::Config(_))
        ));
        assert!(matches!(
            ChatClient::new("ftp://example.com"),
            Err(ClientError::Config(_))
        ));
    }

    #[test]
    fn session_debug_hides_the_token() {
        let c = ChatClient::new("http://localhost:1").unwrap();
        let s = c.session(AuthResponse {
            token: "secret-token".into(),
            expires_at: 5,
            user: User {
                id: UserId::new_random(),
                username: "alice".into(),
                profile: Default::default(),
                created_at: 0,
            },
        });
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("secret-token"), "{dbg}");
        assert_eq!(s.token(), "secret-token");
    }

    #[test]
    fn statuses_without_bodies_map_to_codes() {
        assert_eq!(
            code_for_status(StatusCode::SERVICE_UNAVAILABLE),
            ErrorCode::Unavailable
        );
        assert!(code_for_status(StatusCode::TOO_MANY_REQUESTS).is_retryable());
        assert_eq!(
            code_for_status(StatusCode::UNAUTHORIZED),
            ErrorCode::Unauthorized
        );
    }

    #[tokio::test]
    async fn connection_refused_is_an_http_error() {
        // A port that was just free: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let c = ChatClient::new(&format!("http://{addr}")).unwrap();
        let err = c.login("a", "b").await.unwrap_err();
        assert!(matches!(err, ClientError::Http(_)), "{err:?}");
        assert!(err.is_retryable());
    }
}
