//! Bearer tokens: `Tokens::verify` on anything, as access and as refresh
//! token; and issue-then-verify on claims made from the input.
#![no_main]

use std::sync::OnceLock;

use chat_core::UserId;
use chat_server::{Claims, TokenKind, Tokens};
use libfuzzer_sys::fuzz_target;

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| Tokens::new(&[42; 32]).expect("a 32-byte secret"))
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let tokens = tokens();
    if let Ok(text) = std::str::from_utf8(data) {
        // A forged token is not accepted (the key is not in the input).
        for kind in [TokenKind::Access, TokenKind::Refresh] {
            if let Some(claims) = tokens.verify(text, 0, kind) {
                assert_eq!(tokens.issue(claims), text, "only a token we issued verifies");
                assert_eq!(claims.typ, kind);
            }
        }
    }
    if data.len() >= 41 {
        let mut id = [0u8; 16];
        id.copy_from_slice(&data[..16]);
        let typ = if data[40] & 1 == 0 {
            TokenKind::Access
        } else {
            TokenKind::Refresh
        };
        let claims = Claims {
            sub: UserId::from_bytes(id),
            exp: u64_at(data, 16),
            sid: u64_at(data, 24),
            ep: u64_at(data, 32),
            typ,
        };
        let token = tokens.issue(claims);
        if claims.exp > 0 {
            assert_eq!(tokens.verify(&token, claims.exp - 1, typ), Some(claims));
        }
        assert_eq!(tokens.verify(&token, claims.exp, typ), None, "expired");
        let other = match typ {
            TokenKind::Access => TokenKind::Refresh,
            _ => TokenKind::Access,
        };
        assert_eq!(tokens.verify(&token, 0, other), None, "wrong kind");
    }
});
