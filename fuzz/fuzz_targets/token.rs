//! Bearer tokens: `Tokens::verify` on anything, and issue-then-verify on
//! claims made from the input.
#![no_main]

use std::sync::OnceLock;

use chat_core::UserId;
use chat_server::{Claims, Tokens};
use libfuzzer_sys::fuzz_target;

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| Tokens::new(&[42; 32]).expect("a 32-byte secret"))
}

fuzz_target!(|data: &[u8]| {
    let tokens = tokens();
    if let Ok(text) = std::str::from_utf8(data) {
        // A forged token is not accepted (the key is not in the input).
        if let Some(claims) = tokens.verify(text, 0) {
            assert_eq!(
                tokens.issue(claims),
                text,
                "only a token we issued verifies"
            );
        }
    }
    if data.len() >= 24 {
        let mut id = [0u8; 16];
        id.copy_from_slice(&data[..16]);
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&data[16..24]);
        let claims = Claims {
            sub: UserId::from_bytes(id),
            exp: u64::from_le_bytes(exp),
        };
        let token = tokens.issue(claims);
        let now = claims.exp.saturating_sub(1);
        if claims.exp > 0 {
            assert_eq!(tokens.verify(&token, now), Some(claims));
        }
        assert_eq!(tokens.verify(&token, claims.exp), None, "expired");
    }
});
