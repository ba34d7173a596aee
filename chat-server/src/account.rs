//! Log-in sessions: access and refresh tokens, their check against the
//! directory, refresh, log-out of one session and of all.
//!
//! A log-in opens a *session* (a random 64-bit id) and issues two tokens
//! carrying it: a short-lived access token (15 minutes by default) for HTTP
//! and the WebSocket, and a long-lived refresh token (30 days) that only
//! buys new tokens. Every use of a token checks, besides its signature and
//! expiry, that its session was not logged out and that the user's token
//! epoch has not moved since it was issued (log-out everywhere). Those two
//! facts live in the directory, so every server of a deployment agrees at
//! once. Live WebSocket sessions of a revoked session are closed with 4100
//! over the bus.

use chat_core::api::AuthResponse;
use chat_core::protocol::ErrorCode;
use chat_core::{BusEvent, Envelope, User, UserId};

use crate::auth::{Claims, TokenKind};
use crate::server::{err, wire, ApiResult, ChatServer};

fn unauthorized() -> chat_core::protocol::WireError {
    err(
        ErrorCode::Unauthorized,
        "missing, invalid, expired or revoked token",
    )
}

impl ChatServer {
    /// Opens a new session for `user`: an access and a refresh token.
    pub(crate) async fn log_in(&self, user: User) -> ApiResult<AuthResponse> {
        let session = rand::random::<u64>();
        let state = self
            .inner
            .directory
            .token_state(user.id, session)
            .await
            .map_err(wire)?;
        Ok(self.issue(user, session, state.epoch))
    }

    /// Tokens for `session` of `user` under `epoch`, expiring from now.
    fn issue(&self, user: User, session: u64, epoch: u64) -> AuthResponse {
        let now = self.now();
        let cfg = self.config();
        let expires_at = now.saturating_add(cfg.token_ttl.as_millis() as u64);
        let refresh_expires_at = now.saturating_add(cfg.refresh_token_ttl.as_millis() as u64);
        let claims = |exp, typ| Claims {
            sub: user.id,
            exp,
            sid: session,
            ep: epoch,
            typ,
        };
        AuthResponse {
            token: self
                .inner
                .tokens
                .issue(claims(expires_at, TokenKind::Access)),
            expires_at,
            refresh_token: self
                .inner
                .tokens
                .issue(claims(refresh_expires_at, TokenKind::Refresh)),
            refresh_expires_at,
            user,
        }
    }

    /// The claims of `token` if it is a good token of `kind`: signed,
    /// unexpired, of a session not logged out, under the user's current
    /// epoch. Otherwise `unauthorized`; `unavailable` if the directory
    /// cannot tell.
    pub(crate) async fn authenticate(&self, token: &str, kind: TokenKind) -> ApiResult<Claims> {
        let claims = self
            .inner
            .tokens
            .verify(token, self.now(), kind)
            .ok_or_else(unauthorized)?;
        let state = match self
            .inner
            .directory
            .token_state(claims.sub, claims.sid)
            .await
        {
            Ok(state) => state,
            Err(chat_core::Error::NotFound { .. }) => return Err(unauthorized()),
            Err(e) => return Err(wire(e)),
        };
        if state.revoked || state.epoch != claims.ep {
            return Err(unauthorized());
        }
        Ok(claims)
    }

    /// New tokens for the session of a good refresh token (the old ones
    /// stay good until they expire or the session is logged out).
    pub(crate) async fn refresh(&self, refresh_token: &str) -> ApiResult<AuthResponse> {
        let claims = self.authenticate(refresh_token, TokenKind::Refresh).await?;
        let user = self
            .inner
            .directory
            .user(claims.sub)
            .await
            .map_err(wire)?
            .ok_or_else(unauthorized)?;
        Ok(self.issue(user, claims.sid, claims.ep))
    }

    /// Logs out the session of `claims`: every token of it is refused from
    /// now on, and its live connections close with 4100.
    pub(crate) async fn log_out(&self, claims: &Claims) -> ApiResult<()> {
        let now = self.now();
        // No token of the session outlives the longest lifetime from now.
        let until = now.saturating_add(self.config().refresh_token_ttl.as_millis() as u64);
        self.inner
            .directory
            .revoke_session(claims.sub, claims.sid, until, now)
            .await
            .map_err(wire)?;
        self.close_revoked(claims.sub, Some(claims.sid)).await;
        Ok(())
    }

    /// Logs out every session of `user` (the token epoch moves on), and
    /// closes all their live connections with 4100.
    pub(crate) async fn log_out_everywhere(&self, user: UserId) -> ApiResult<()> {
        self.inner
            .directory
            .revoke_all_sessions(user)
            .await
            .map_err(wire)?;
        self.close_revoked(user, None).await;
        Ok(())
    }

    /// Tells every node to close `user`'s connections of `session` (all of
    /// them for `None`). Best effort: the tokens are refused either way.
    async fn close_revoked(&self, user: UserId, session: Option<u64>) {
        let envelope = Envelope {
            event: BusEvent::Revoked { session },
            skip_device: None,
        };
        if let Err(e) = self.inner.bus.publish(&[user], envelope).await {
            tracing::warn!(error = %e, "cannot close revoked connections");
        }
    }
}
