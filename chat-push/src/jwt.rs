//! Compact JWS signing (RFC 7515) with ring: RS256 for Google's OAuth
//! assertion, ES256 for the APNs provider token. Only what the two
//! platforms need; keys come as PEM.

// FCM uses only RS256 and APNs only ES256: with one of them compiled in,
// the other algorithm is unused.
#![cfg_attr(not(all(feature = "fcm", feature = "apns")), allow(dead_code))]

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256,
};
use serde::Serialize;

/// A private key that signs JWTs.
pub(crate) enum Signer {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256(RsaKeyPair),
    /// ECDSA on P-256 with SHA-256, signature as `r || s` (RFC 7518, 3.4).
    Es256(EcdsaKeyPair),
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            Signer::Rs256(_) => "Signer::Rs256(..)",
            Signer::Es256(_) => "Signer::Es256(..)",
        })
    }
}

impl Signer {
    /// An RS256 signer from a PEM `PRIVATE KEY` (PKCS#8, as in a Google
    /// service-account file) or `RSA PRIVATE KEY` (PKCS#1).
    pub(crate) fn rs256_from_pem(pem: &str) -> Result<Self, String> {
        let (label, der) = pem_decode(pem)?;
        let key = match label.as_str() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            other => return Err(format!("expected an RSA private key, got a PEM {other:?}")),
        }
        .map_err(|e| format!("not a usable RSA private key: {e}"))?;
        Ok(Signer::Rs256(key))
    }

    /// An ES256 signer from a PEM `PRIVATE KEY` (PKCS#8 with the public key
    /// included, as in an APNs `.p8` file).
    pub(crate) fn es256_from_pem(pem: &str) -> Result<Self, String> {
        let (label, der) = pem_decode(pem)?;
        if label != "PRIVATE KEY" {
            return Err(format!(
                "expected a PKCS#8 PEM \"PRIVATE KEY\" (an APNs .p8 file), got {label:?}; \
                 convert with `openssl pkcs8 -topk8 -nocrypt`"
            ));
        }
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
                .map_err(|e| format!("not a usable P-256 private key: {e}"))?;
        Ok(Signer::Es256(key))
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Rs256(_) => "RS256",
            Signer::Es256(_) => "ES256",
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match self {
            Signer::Rs256(key) => {
                let mut sig = vec![0; key.public().modulus_len()];
                key.sign(&RSA_PKCS1_SHA256, &rng, message, &mut sig)
                    .map_err(|e| format!("RS256 signing failed: {e}"))?;
                Ok(sig)
            }
            Signer::Es256(key) => key
                .sign(&rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| format!("ES256 signing failed: {e}")),
        }
    }

    /// A signed compact JWT: the header gets `alg` (and `typ`, and `kid`
    /// when given).
    pub(crate) fn jwt(&self, kid: Option<&str>, claims: &impl Serialize) -> Result<String, String> {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'a str,
            typ: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            kid: Option<&'a str>,
        }
        let header = Header {
            alg: self.alg(),
            typ: "JWT",
            kid,
        };
        let mut token = b64_json(&header)?;
        token.push('.');
        token.push_str(&b64_json(claims)?);
        let signature = self.sign(token.as_bytes())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(token)
    }
}

/// Base64url (no padding) of a value's JSON.
fn b64_json(value: &impl Serialize) -> Result<String, String> {
    serde_json::to_vec(value)
        .map(|json| URL_SAFE_NO_PAD.encode(json))
        .map_err(|e| format!("cannot encode a JWT part: {e}"))
}

/// The label and DER bytes of the first PEM block in `pem`.
fn pem_decode(pem: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = pem.lines().map(str::trim).skip_while(|l| l.is_empty());
    let first = lines.next().unwrap_or_default();
    let label = first
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or("not a PEM key: no \"-----BEGIN ...-----\" line")?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut b64 = String::new();
    for line in lines {
        if line == end {
            let der = STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| format!("PEM body is not base64: {e}"))?;
            return Ok((label, der));
        }
        if line.contains(':') {
            return Err("encrypted PEM keys are not supported".into());
        }
        b64.push_str(line);
    }
    Err(format!("PEM key has no {end:?} line"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = STANDARD.encode(der);
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            body.join("\n")
        )
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let signer = Signer::es256_from_pem(&pem("PRIVATE KEY", pkcs8.as_ref())).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        use ring::signature::KeyPair;
        let token = signer
            .jwt(
                Some("KEY123"),
                &serde_json::json!({"iss": "TEAM", "iat": 1}),
            )
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], "KEY123");
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "JOSE ES256 signatures are r || s");
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, pair.public_key().as_ref())
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn bad_pem_is_an_error_not_a_panic() {
        for input in [
            "",
            "hello",
            "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
        ] {
            assert!(Signer::es256_from_pem(input).is_err(), "{input:?}");
            assert!(Signer::rs256_from_pem(input).is_err(), "{input:?}");
        }
    }
}
