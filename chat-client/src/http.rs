//! The stateless HTTP API: accounts, profiles, friends, channels, history,
//! devices, presence and `route`.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chat_core::api::{
    AuthResponse, ChannelList, CreateGroupRequest, ErrorBody, FriendAnswer, FriendRequests,
    FriendStatus, GroupChange, HistoryQuery, InvitationList, LoginRequest, MessagePage,
    OpenDirectRequest, PresenceList, RefreshRequest, RegisterDeviceRequest, RouteResponse,
    SignupRequest, UpdatePrivacyRequest, UpdateProfileRequest, UserList, MAX_CHANNEL_PAGE,
};
use chat_core::protocol::{ErrorCode, WireError};
use chat_core::{Channel, ChannelId, Device, DeviceId, Platform, Presence, Privacy, User, UserId};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::connection::{ConnectOptions, Connection};
use crate::error::{ClientError, Result};
use crate::store::CursorStore;
use crate::tls::TlsOptions;

/// How long one HTTP call may take by default.
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// An access token this close to expiry is refreshed before use.
const REFRESH_MARGIN_MS: u64 = 60_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An unauthenticated handle on the HTTP API of a chat deployment.
///
/// Cheap to clone (the connection pool is shared). [`ChatClient::signup`]
/// and [`ChatClient::login`] return a [`Session`], which makes the
/// authenticated calls.
#[derive(Debug, Clone)]
pub struct ChatClient {
    http: reqwest::Client,
    /// TLS for `wss` (and, unless the caller gave its own HTTP client, for
    /// `https`).
    tls: Arc<rustls::ClientConfig>,
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8080`.
    base: Arc<str>,
}

impl ChatClient {
    /// A client for the API at `base_url` (e.g. `http://127.0.0.1:8080` or
    /// `https://chat.example.com`), with a 30 s timeout per call, trusting
    /// the webpki roots for `https` and `wss`. Idle pooled connections are
    /// dropped after 5 s, before the server's keep-alive timeout (10 s by
    /// default) can close one just as a request goes out on it;
    /// `TCP_NODELAY` is on.
    pub fn new(base_url: &str) -> Result<Self> {
        Self::with_tls(base_url, TlsOptions::default())
    }

    /// A client that trusts the roots of `tls` for `https` and `wss` (the
    /// platform's, or a custom root such as a test's self-signed
    /// certificate).
    pub fn with_tls(base_url: &str, tls: TlsOptions) -> Result<Self> {
        let tls = tls.client_config()?;
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_HTTP_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .use_preconfigured_tls((*tls).clone())
            .build()
            .map_err(ClientError::from)?;
        Self::build(base_url, http, tls)
    }

    /// A client using a `reqwest::Client` you configured (timeouts, proxies,
    /// its own TLS); the WebSocket trusts the webpki roots.
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Result<Self> {
        Self::build(base_url, http, TlsOptions::default().client_config()?)
    }

    fn build(
        base_url: &str,
        http: reqwest::Client,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self> {
        let url = Url::parse(base_url)
            .map_err(|e| ClientError::Config(format!("invalid base URL {base_url:?}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Config(format!(
                "base URL {base_url:?} must be http:// or https://"
            )));
        }
        Ok(Self {
            http,
            tls,
            base: Arc::from(base_url.trim_end_matches('/')),
        })
    }

    /// The TLS configuration for `wss`.
    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.clone()
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
    ///
    /// ```no_run
    /// # async fn run() -> chat_client::Result<()> {
    /// let client = chat_client::ChatClient::new("http://127.0.0.1:8080")?;
    /// let alice = client.login("alice", "correct horse battery").await?;
    /// println!("logged in as {}", alice.user().username);
    /// # Ok(()) }
    /// ```
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

    /// Logs in with `credentials` and keeps them in the session: when the
    /// server later refuses the session's tokens for good (the refresh
    /// token expired, or the session was logged out), the session logs in
    /// again by itself, and so does its live [`Connection`].
    ///
    /// With [`Retry`](crate::Retry), it also waits for a server that is
    /// not up yet:
    ///
    /// ```no_run
    /// # async fn run() -> chat_client::Result<()> {
    /// use chat_client::{ChatClient, Password, Retry};
    ///
    /// let client = ChatClient::new("http://127.0.0.1:8080")?;
    /// let credentials = Password::new("echo-bot", "a long bot password");
    /// let session = Retry::default()
    ///     .run(|| client.login_with(credentials.clone()))
    ///     .await?;
    /// # let _ = session;
    /// # Ok(()) }
    /// ```
    pub async fn login_with(&self, credentials: impl Credentials + 'static) -> Result<Session> {
        let auth = credentials.log_in(self).await?;
        let session = self.session(auth);
        session.set_credentials(Arc::new(credentials));
        Ok(session)
    }

    /// A session from an earlier [`AuthResponse`] (tokens kept between
    /// runs; [`Session::auth`] gives the current ones). No request is made:
    /// an expired access token is refreshed on first use, and an expired or
    /// revoked refresh token fails with [`ErrorCode::Unauthorized`].
    pub fn session(&self, auth: AuthResponse) -> Session {
        Session {
            client: self.clone(),
            user: auth.user.clone(),
            shared: Arc::new(SessionShared {
                auth: Mutex::new(auth),
                refreshing: tokio::sync::Mutex::new(()),
                credentials: Mutex::new(None),
            }),
        }
    }

    /// A session from a refresh token: trades it for new tokens
    /// (`POST /v1/refresh`).
    pub async fn resume(&self, refresh_token: &str) -> Result<Session> {
        let auth = self.refresh(refresh_token).await?;
        Ok(self.session(auth))
    }

    /// `POST /v1/refresh`: new tokens for the session of `refresh_token`.
    async fn refresh(&self, refresh_token: &str) -> Result<AuthResponse> {
        let body = RefreshRequest {
            refresh_token: refresh_token.to_owned(),
        };
        self.call(self.request(Method::POST, "/v1/refresh").json(&body))
            .await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    /// `POST /v1/login` for [`Password`]: the tokens.
    async fn login_tokens(&self, username: &str, password: &str) -> Result<AuthResponse> {
        let body = LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        self.call(self.request(Method::POST, "/v1/login").json(&body))
            .await
    }

    /// Sends a request and decodes a JSON answer.
    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder) -> Result<T> {
        let resp = req.send().await?;
        let bytes = checked(resp).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::decode)
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

/// `s` escaped for a query string value (every byte but unreserved ones
/// as `%XX`).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
        415 => ErrorCode::UnsupportedMediaType,
        422 => ErrorCode::LimitExceeded,
        429 => ErrorCode::RateLimited,
        502..=504 => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// How a [`Session`] logs in again by itself when the server refuses its
/// tokens for good: the refresh token expired, or the session was logged
/// out (a live connection then closes with 4100). Give it with
/// [`ChatClient::login_with`] or [`Session::set_credentials`].
///
/// [`Password`] is the usual one; implement it to fetch a password from a
/// vault, or to ask the user.
#[async_trait]
pub trait Credentials: Send + Sync + fmt::Debug {
    /// Logs in (typically `POST /v1/login`) and returns the new tokens.
    /// They must be the same user's: a session never changes user.
    async fn log_in(&self, client: &ChatClient) -> Result<AuthResponse>;
}

/// [`Credentials`] from a username and password. `Debug` does not show the
/// password.
#[derive(Clone)]
pub struct Password {
    username: String,
    password: String,
}

impl Password {
    /// Credentials that log in as `username` with `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: password.into(),
        }
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Password")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[async_trait]
impl Credentials for Password {
    async fn log_in(&self, client: &ChatClient) -> Result<AuthResponse> {
        client.login_tokens(&self.username, &self.password).await
    }
}

/// An authenticated user: the tokens, the user, and every HTTP call that
/// needs them. Cheap to clone; clones share the tokens.
///
/// The access token is short-lived (15 minutes by default): every call
/// first refreshes it when it is about to expire (`POST /v1/refresh`, with
/// the refresh token), and a call answered `unauthorized` is refreshed and
/// tried once more. A session with [`Credentials`] also logs in again when
/// the refresh token is refused. [`Session::connect`] opens the live
/// WebSocket connection, which asks [`Session::route`] (and so refreshes)
/// before every reconnect.
#[derive(Clone)]
pub struct Session {
    client: ChatClient,
    user: User,
    shared: Arc<SessionShared>,
}

/// What the clones of a session share.
struct SessionShared {
    /// The current tokens, replaced by every refresh.
    auth: Mutex<AuthResponse>,
    /// Held while refreshing, so concurrent calls refresh once.
    refreshing: tokio::sync::Mutex<()>,
    /// How to log in again, if given.
    credentials: Mutex<Option<Arc<dyn Credentials>>>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("base_url", &self.client.base_url())
            .field("user", &self.user.id)
            .field("username", &self.user.username)
            .field("expires_at", &self.expires_at())
            .field("token", &"<redacted>")
            .finish()
    }
}

impl Session {
    /// The unauthenticated client this session was made from.
    pub fn client(&self) -> &ChatClient {
        &self.client
    }

    /// The current access token (the bearer token of HTTP calls and the
    /// WebSocket).
    pub fn token(&self) -> String {
        lock(&self.shared.auth).token.clone()
    }

    /// When the current access token expires, Unix milliseconds.
    pub fn expires_at(&self) -> u64 {
        lock(&self.shared.auth).expires_at
    }

    /// The current tokens, to keep between runs (see [`ChatClient::session`]).
    pub fn auth(&self) -> AuthResponse {
        lock(&self.shared.auth).clone()
    }

    /// Gives the session (and every clone of it) `credentials` to log in
    /// again with when its tokens are refused for good; see
    /// [`ChatClient::login_with`].
    pub fn set_credentials(&self, credentials: Arc<dyn Credentials>) {
        *lock(&self.shared.credentials) = Some(credentials);
    }

    /// Whether the session has [`Credentials`] to log in again with.
    pub(crate) fn has_credentials(&self) -> bool {
        lock(&self.shared.credentials).is_some()
    }

    /// An access token good for at least another minute, refreshed first
    /// if needed.
    pub async fn access_token(&self) -> Result<String> {
        {
            let auth = lock(&self.shared.auth);
            if auth.expires_at > now_ms().saturating_add(REFRESH_MARGIN_MS) {
                return Ok(auth.token.clone());
            }
        }
        self.refresh_tokens(None).await
    }

    /// Trades the refresh token for new tokens, unless another call did so
    /// since `stale` (the access token that failed) was current. A refresh
    /// token refused is replaced by logging in again, if the session has
    /// credentials.
    async fn refresh_tokens(&self, stale: Option<&str>) -> Result<String> {
        let _one_at_a_time = self.shared.refreshing.lock().await;
        let refresh_token = {
            let auth = lock(&self.shared.auth);
            let renewed = match stale {
                Some(stale) => auth.token != stale,
                None => auth.expires_at > now_ms().saturating_add(REFRESH_MARGIN_MS),
            };
            if renewed {
                return Ok(auth.token.clone());
            }
            auth.refresh_token.clone()
        };
        let fresh = match self.client.refresh(&refresh_token).await {
            Err(e) if e.is_unauthorized() && self.has_credentials() => self.log_in_tokens().await?,
            other => other?,
        };
        let token = fresh.token.clone();
        *lock(&self.shared.auth) = fresh;
        Ok(token)
    }

    /// Logs in again with the session's credentials and takes the new
    /// tokens (for the connection, after its tokens were refused).
    pub(crate) async fn log_in_again(&self) -> Result<()> {
        let _one_at_a_time = self.shared.refreshing.lock().await;
        let fresh = self.log_in_tokens().await?;
        *lock(&self.shared.auth) = fresh;
        Ok(())
    }

    /// New tokens from the credentials, checked to be this user's.
    async fn log_in_tokens(&self) -> Result<AuthResponse> {
        let credentials = lock(&self.shared.credentials).clone().ok_or_else(|| {
            ClientError::Config("the session has no credentials to log in again with".into())
        })?;
        let fresh = credentials.log_in(&self.client).await?;
        if fresh.user.id != self.user.id {
            return Err(ClientError::Config(format!(
                "the session's credentials log in as {}, not as {}",
                fresh.user.username, self.user.username
            )));
        }
        Ok(fresh)
    }

    /// `POST /v1/logout`: ends this session on the server: its tokens are
    /// refused from now on, everywhere, and its live connections close
    /// with 4100.
    pub async fn logout(&self) -> Result<()> {
        self.empty(Method::POST, "/v1/logout").await
    }

    /// `POST /v1/logout/all`: ends every session of the user (every device
    /// logs in again), this one included.
    pub async fn logout_all(&self) -> Result<()> {
        self.empty(Method::POST, "/v1/logout/all").await
    }

    /// The logged-in user, as of log-in.
    pub fn user(&self) -> &User {
        &self.user
    }

    /// The logged-in user's id.
    pub fn user_id(&self) -> UserId {
        self.user.id
    }

    /// Sends the request `build` makes with a fresh access token; on
    /// `unauthorized`, refreshes and tries once more (the server did
    /// nothing with a refused token, so the retry is safe).
    async fn authed_call(
        &self,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
        method: Method,
        path: &str,
    ) -> Result<Vec<u8>> {
        let token = self.access_token().await?;
        let send = |token: &str| {
            let req = self.client.request(method.clone(), path).bearer_auth(token);
            build(req).send()
        };
        match checked(send(&token).await?).await {
            Err(ClientError::Api(e)) if e.code == ErrorCode::Unauthorized => {
                let token = self.refresh_tokens(Some(&token)).await?;
                checked(send(&token).await?).await
            }
            other => other,
        }
    }

    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<T> {
        let bytes = self.authed_call(build, method, path).await?;
        serde_json::from_slice(&bytes).map_err(ClientError::decode)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call_with(Method::GET, path, |r| r).await
    }

    async fn send_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.call_with(method, path, |r| r.json(body)).await
    }

    /// A call whose answer has no body (204).
    async fn empty(&self, method: Method, path: &str) -> Result<()> {
        self.authed_call(|r| r, method, path).await.map(drop)
    }

    /// `POST /v1/attachments`: uploads a file named `name` (1 to 255 bytes,
    /// no `/`, `\` or control characters) with its content type (one the
    /// server allows, e.g. `image/png`, `application/pdf`, `text/plain`),
    /// and answers its reference: give its `id` to
    /// [`ConnectionHandle::send_with_attachments`](crate::ConnectionHandle::send_with_attachments).
    /// PNG and JPEG images come back with their `width` and `height` and
    /// get a thumbnail ([`download_thumbnail`](Self::download_thumbnail)).
    ///
    /// Refusals, with [`ClientError::Api`]: `attachment_too_large` above
    /// the server's size limit (25 MiB by default), `unsupported_media_type`
    /// for a type the server does not take or bytes that are not the image
    /// type they claim, `invalid_input` for a bad name.
    pub async fn upload(
        &self,
        name: &str,
        content_type: &str,
        data: impl Into<bytes::Bytes>,
    ) -> Result<chat_core::Attachment> {
        let data: bytes::Bytes = data.into();
        let path = format!("/v1/attachments?name={}", query_escape(name));
        self.call_with(Method::POST, &path, |r| {
            r.header(reqwest::header::CONTENT_TYPE, content_type)
                .body(data.clone())
        })
        .await
    }

    /// `GET /v1/attachments/{id}`: the bytes of a file you uploaded, or
    /// that was shared in a channel you are a member of (`not_found`
    /// otherwise, as for an id that does not exist). Refuses a file larger
    /// than `max_bytes` with `limit_exceeded` before reading it.
    pub async fn download(&self, id: chat_core::AttachmentId, max_bytes: u64) -> Result<Vec<u8>> {
        self.download_path(&format!("/v1/attachments/{id}"), max_bytes)
            .await
    }

    /// `GET /v1/attachments/{id}/thumbnail`: the PNG thumbnail of an image
    /// attachment (at most 320 pixels a side), for the same users as
    /// [`download`](Self::download); `not_found` for a file without one.
    pub async fn download_thumbnail(&self, id: chat_core::AttachmentId) -> Result<Vec<u8>> {
        self.download_path(&format!("/v1/attachments/{id}/thumbnail"), 4 << 20)
            .await
    }

    /// A download, read chunk by chunk up to `max_bytes`.
    async fn download_path(&self, path: &str, max_bytes: u64) -> Result<Vec<u8>> {
        let token = self.access_token().await?;
        let send = |token: String| {
            self.client
                .request(Method::GET, path)
                .bearer_auth(token)
                .send()
        };
        let mut resp = send(token.clone()).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            let token = self.refresh_tokens(Some(&token)).await?;
            resp = send(token).await?;
        }
        if !resp.status().is_success() {
            return checked(resp).await.map(drop).map(|()| Vec::new());
        }
        let too_large = || {
            ClientError::Api(WireError::new(
                ErrorCode::LimitExceeded,
                format!("the file is larger than {max_bytes} bytes"),
            ))
        };
        if resp.content_length().is_some_and(|n| n > max_bytes) {
            return Err(too_large());
        }
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if (out.len() + chunk.len()) as u64 > max_bytes {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
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

    /// `PUT /v1/friends/{user}`: asks `user` to be friends, or accepts
    /// their pending request (idempotent). [`FriendStatus::Requested`] until
    /// they accept; [`FriendStatus::Friends`] once both have asked.
    pub async fn add_friend(&self, user: UserId) -> Result<FriendStatus> {
        let answer: FriendAnswer = self
            .call_with(Method::PUT, &format!("/v1/friends/{user}"), |r| r)
            .await?;
        Ok(answer.status)
    }

    /// `DELETE /v1/friends/{user}`: unfriends `user`, declines their
    /// request or cancels the caller's (idempotent).
    pub async fn remove_friend(&self, user: UserId) -> Result<()> {
        self.empty(Method::DELETE, &format!("/v1/friends/{user}"))
            .await
    }

    /// `PUT /v1/blocks/{user}`: blocks `user` (idempotent): they can no
    /// longer open a direct channel with you or send in it (their sends
    /// fail with code `blocked`) and see you offline; groups are not
    /// affected.
    pub async fn block(&self, user: UserId) -> Result<()> {
        self.empty(Method::PUT, &format!("/v1/blocks/{user}")).await
    }

    /// `DELETE /v1/blocks/{user}`: unblocks `user` (idempotent).
    pub async fn unblock(&self, user: UserId) -> Result<()> {
        self.empty(Method::DELETE, &format!("/v1/blocks/{user}"))
            .await
    }

    /// `GET /v1/blocks`: the users you block.
    pub async fn blocked(&self) -> Result<Vec<User>> {
        let list: UserList = self.get("/v1/blocks").await?;
        Ok(list.users)
    }

    /// `GET /v1/friends/requests`: pending friend requests, both ways.
    pub async fn friend_requests(&self) -> Result<FriendRequests> {
        self.get("/v1/friends/requests").await
    }

    /// `GET /v1/me/privacy`.
    pub async fn privacy(&self) -> Result<Privacy> {
        self.get("/v1/me/privacy").await
    }

    /// `PATCH /v1/me/privacy`: changes the fields that are `Some`.
    pub async fn update_privacy(&self, update: &UpdatePrivacyRequest) -> Result<Privacy> {
        self.send_json(Method::PATCH, "/v1/me/privacy", update)
            .await
    }

    /// `GET /v1/invitations`: pending group invitations, both ways.
    pub async fn invitations(&self) -> Result<InvitationList> {
        self.get("/v1/invitations").await
    }

    /// `PUT /v1/invitations/{channel}`: joins a group the caller is invited to.
    pub async fn accept_invitation(&self, channel: ChannelId) -> Result<Channel> {
        self.call_with(Method::PUT, &format!("/v1/invitations/{channel}"), |r| r)
            .await
    }

    /// `DELETE /v1/invitations/{channel}`: declines an invitation (idempotent).
    pub async fn decline_invitation(&self, channel: ChannelId) -> Result<()> {
        self.empty(Method::DELETE, &format!("/v1/invitations/{channel}"))
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

    /// `POST /v1/groups`: a group owned by the caller. Each of `members`
    /// is added, or invited when their privacy settings ask for consent
    /// (see [`GroupChange::invited`]).
    pub async fn create_group(&self, name: &str, members: &[UserId]) -> Result<GroupChange> {
        let body = CreateGroupRequest {
            name: name.to_owned(),
            members: members.to_vec(),
        };
        self.send_json(Method::POST, "/v1/groups", &body).await
    }

    /// `PUT /v1/groups/{channel}/members/{user}` (owner only): adds `user`,
    /// or invites them when their settings ask for consent.
    pub async fn add_member(&self, channel: ChannelId, user: UserId) -> Result<GroupChange> {
        self.call_with(
            Method::PUT,
            &format!("/v1/groups/{channel}/members/{user}"),
            |r| r,
        )
        .await
    }

    /// `DELETE /v1/groups/{channel}/members/{user}`: the owner removes a
    /// member or withdraws an invitation; a member leaves.
    pub async fn remove_member(&self, channel: ChannelId, user: UserId) -> Result<Channel> {
        self.call_with(
            Method::DELETE,
            &format!("/v1/groups/{channel}/members/{user}"),
            |r| r,
        )
        .await
    }

    /// `GET /v1/channels?after=&limit=`: one page of the caller's channels,
    /// by id, and the cursor of the next page.
    pub async fn channels_page(
        &self,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<(Vec<Channel>, Option<ChannelId>)> {
        let mut params: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(after) = after {
            params.push(("after", after.to_string()));
        }
        let list: ChannelList = self
            .call_with(Method::GET, "/v1/channels", |r| r.query(&params))
            .await?;
        Ok((list.channels, list.next))
    }

    /// Every channel of the caller, page by page.
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = self.channels_page(after, MAX_CHANNEL_PAGE).await?;
            all.extend(page);
            match next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `GET /v1/channels?after=&limit=` in full: one page of the caller's
    /// channels with their summaries (unread count, read marker, last
    /// message, the other member's markers in direct channels), and the
    /// cursor of the next page.
    pub async fn channel_list_page(
        &self,
        after: Option<ChannelId>,
        limit: usize,
    ) -> Result<ChannelList> {
        let mut params: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(after) = after {
            params.push(("after", after.to_string()));
        }
        self.call_with(Method::GET, "/v1/channels", |r| r.query(&params))
            .await
    }

    /// Every channel of the caller with its summary, page by page: what a
    /// device shows in its channel list after a (re)connect, unread counts
    /// and read markers included.
    ///
    /// ```no_run
    /// # async fn run(session: chat_client::Session) -> chat_client::Result<()> {
    /// for (channel, summary) in session.channel_summaries().await? {
    ///     println!("{}: {} unread", channel.id, summary.unread);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn channel_summaries(
        &self,
    ) -> Result<Vec<(Channel, chat_core::api::ChannelSummary)>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let list = self.channel_list_page(after, MAX_CHANNEL_PAGE).await?;
            all.extend(list.channels.into_iter().zip(list.summaries));
            match list.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `GET /v1/channels/{id}` (members only).
    pub async fn channel(&self, id: ChannelId) -> Result<Channel> {
        self.get(&format!("/v1/channels/{id}")).await
    }

    /// `GET /v1/search`: the messages of your channels (and only those)
    /// that hold every word of `query` (whole words, any case), newest
    /// first, `limit` (1 to 100, default 20) at a time; give the page's
    /// `next` as `after` for the following page.
    ///
    /// ```no_run
    /// # async fn run(session: chat_client::Session) -> chat_client::Result<()> {
    /// let mut after = None;
    /// loop {
    ///     let page = session.search("lunch tomorrow", after, Some(50)).await?;
    ///     for m in &page.messages {
    ///         println!("{}: {}", m.id, m.content);
    ///     }
    ///     match page.next {
    ///         Some(next) => after = Some(next),
    ///         None => break,
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn search(
        &self,
        query: &str,
        after: Option<chat_core::SearchCursor>,
        limit: Option<u32>,
    ) -> Result<chat_core::search::SearchPage> {
        let mut params: Vec<(&str, String)> = vec![("q", query.to_owned())];
        if let Some(after) = after {
            params.push(("after_id", after.id.to_string()));
            params.push(("after_channel", after.channel.to_string()));
        }
        if let Some(limit) = limit {
            params.push(("limit", limit.to_string()));
        }
        self.call_with(Method::GET, "/v1/search", |r| r.query(&params))
            .await
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
        self.call_with(
            Method::GET,
            &format!("/v1/channels/{channel}/messages"),
            |r| r.query(&params),
        )
        .await
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
        let answer: PresenceList = self
            .call_with(Method::GET, "/v1/presence", |r| {
                r.query(&[("users", list.as_str())])
            })
            .await?;
        Ok(answer.users)
    }

    /// `GET /v1/route`: the chat server to connect to, preferring `region`
    /// (with a fresh access token, which [`Session::token`] then returns).
    pub async fn route(&self, region: Option<&str>) -> Result<RouteResponse> {
        self.call_with(Method::GET, "/v1/route", |r| match region {
            Some(region) => r.query(&[("region", region)]),
            None => r,
        })
        .await
    }

    /// Opens the live connection for `device`: see [`Connection::connect`].
    ///
    /// ```no_run
    /// # async fn run(alice: chat_client::Session) -> chat_client::Result<()> {
    /// use std::sync::Arc;
    /// use chat_client::{ConnectOptions, DeviceId, FileCursorStore};
    ///
    /// // Keep the device id with the cursor store: together they are this
    /// // installation's place in the inbox.
    /// let device = DeviceId::new_random();
    /// let store = Arc::new(FileCursorStore::new("./chat-state"));
    /// let conn = alice.connect(device, store, ConnectOptions::default()).await?;
    /// # let _ = conn;
    /// # Ok(()) }
    /// ```
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
            refresh_token: "secret-refresh".into(),
            refresh_expires_at: 6,
            user: User {
                id: UserId::new_random(),
                username: "alice".into(),
                profile: Default::default(),
                created_at: 0,
            },
        });
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("secret-token"), "{dbg}");
        assert!(!dbg.contains("secret-refresh"), "{dbg}");
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
