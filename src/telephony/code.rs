//! One-time passcodes: making them (cryptographic RNG), keeping only a
//! keyed hash (HMAC-SHA256 over the transaction id and the code), and the
//! rules of a verification attempt ([`decide`]), which are pure.

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

/// A code as sent to the user. Never printed: `Debug` hides it.
pub struct OtpCode(String);

impl std::fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<otp code>")
    }
}

impl OtpCode {
    /// `length` decimal digits, each uniform, from the thread's CSPRNG
    /// (ChaCha, seeded and reseeded from the operating system).
    pub fn generate(length: usize) -> Self {
        let mut rng = rand::rng();
        Self(
            (0..length)
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect(),
        )
    }

    /// The digits, for the request to the hook and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A random identifier: 32 lowercase hex digits (128 bits).
pub fn random_id() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}

/// A random UUID (version 4), for Okta's `eventId`.
pub fn random_uuid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    )
}

/// The keyed hash of codes. The key is set by configuration or drawn at
/// start; the store holds hashes only.
#[derive(Clone)]
pub struct CodeHasher {
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for CodeHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeHasher(<key>)")
    }
}

impl CodeHasher {
    pub fn new(key: &[u8]) -> Self {
        Self {
            keyed: Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length"),
        }
    }

    /// A hasher with a fresh random 256-bit key.
    pub fn random() -> Self {
        let key: [u8; 32] = rand::rng().random();
        Self::new(&key)
    }

    fn mac(&self, transaction_id: &str, code: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(transaction_id.as_bytes());
        mac.update(b"\0");
        mac.update(code.as_bytes());
        mac
    }

    pub fn hash(&self, transaction_id: &str, code: &str) -> Vec<u8> {
        self.mac(transaction_id, code)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `code` is the one hashed into `stored`, in constant time.
    pub fn matches(&self, transaction_id: &str, code: &str, stored: &[u8]) -> bool {
        self.mac(transaction_id, code).verify_slice(stored).is_ok()
    }
}

/// Where a stored passcode stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtpState {
    /// Delivered and not yet verified.
    Delivered,
    /// Verified once; never again.
    Verified,
    /// Too many wrong attempts.
    Locked,
}

impl OtpState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Verified => "verified",
            Self::Locked => "locked",
        }
    }

    pub fn parse(text: &str) -> Self {
        match text {
            "delivered" => Self::Delivered,
            "verified" => Self::Verified,
            _ => Self::Locked,
        }
    }
}

/// What a stored passcode holds (no code, only its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOtp {
    pub state: OtpState,
    pub expires_at_millis: i64,
    pub attempts: u32,
    pub max_attempts: u32,
}

/// The answer to a verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyResult {
    Verified,
    Invalid,
    Expired,
    Locked,
}

/// The decision about one attempt, and the state to store after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub result: VerifyResult,
    /// Why, when the result alone does not say (`already_used`).
    pub reason: Option<&'static str>,
    /// `Some` when the stored passcode changes.
    pub update: Option<(OtpState, u32)>,
    pub attempts_remaining: u32,
}

/// Decides one attempt. `matches` (the constant-time comparison) is called
/// only when the code could still be accepted, so an expired, used or
/// locked passcode costs no attempt.
pub fn decide(stored: &StoredOtp, now_millis: i64, matches: impl FnOnce() -> bool) -> Decision {
    let remaining = stored.max_attempts.saturating_sub(stored.attempts);
    let no_change = |result, reason| Decision {
        result,
        reason,
        update: None,
        attempts_remaining: remaining,
    };
    match stored.state {
        OtpState::Verified => return no_change(VerifyResult::Invalid, Some("already_used")),
        OtpState::Locked => return no_change(VerifyResult::Locked, None),
        OtpState::Delivered => {}
    }
    if now_millis >= stored.expires_at_millis {
        return no_change(VerifyResult::Expired, None);
    }
    if remaining == 0 {
        return Decision {
            result: VerifyResult::Locked,
            reason: None,
            update: Some((OtpState::Locked, stored.attempts)),
            attempts_remaining: 0,
        };
    }
    let attempts = stored.attempts + 1;
    if matches() {
        return Decision {
            result: VerifyResult::Verified,
            reason: None,
            update: Some((OtpState::Verified, attempts)),
            attempts_remaining: remaining - 1,
        };
    }
    if attempts >= stored.max_attempts {
        Decision {
            result: VerifyResult::Locked,
            reason: Some("too_many_attempts"),
            update: Some((OtpState::Locked, attempts)),
            attempts_remaining: 0,
        }
    } else {
        Decision {
            result: VerifyResult::Invalid,
            reason: Some("wrong_code"),
            update: Some((OtpState::Delivered, attempts)),
            attempts_remaining: remaining - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_digits_of_the_asked_length_and_vary() {
        let codes: Vec<String> = (0..50).map(|_| OtpCode::generate(6).0).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()))
        );
        let distinct: std::collections::BTreeSet<_> = codes.iter().collect();
        assert!(distinct.len() > 40);
        assert_eq!(OtpCode::generate(8).expose().len(), 8);
        assert_eq!(format!("{:?}", OtpCode::generate(6)), "<otp code>");
    }

    #[test]
    fn ids_are_random_and_well_formed() {
        let id = random_id();
        assert_eq!(id.len(), 32);
        assert_ne!(id, random_id());
        let u = random_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn hash_is_keyed_and_bound_to_the_transaction() {
        let a = CodeHasher::new(b"key-a");
        let b = CodeHasher::new(b"key-b");
        let h = a.hash("tx1", "123456");
        assert_eq!(h.len(), 32);
        assert!(a.matches("tx1", "123456", &h));
        assert!(!a.matches("tx1", "123457", &h));
        assert!(!a.matches("tx2", "123456", &h));
        assert!(!b.matches("tx1", "123456", &h));
        assert!(!a.matches("tx1", "123456", &h[..31]));
        assert_ne!(a.hash("tx1", "123456"), b.hash("tx1", "123456"));
    }

    fn otp(state: OtpState, attempts: u32) -> StoredOtp {
        StoredOtp {
            state,
            expires_at_millis: 1_000,
            attempts,
            max_attempts: 5,
        }
    }

    #[test]
    fn attempts_are_decided() {
        use OtpState::*;
        use VerifyResult as R;
        // (stored, now, code matches) -> (result, stored after, remaining)
        let table = [
            (
                otp(Delivered, 0),
                10,
                true,
                R::Verified,
                Some((Verified, 1)),
                4,
            ),
            (
                otp(Delivered, 0),
                10,
                false,
                R::Invalid,
                Some((Delivered, 1)),
                4,
            ),
            (
                otp(Delivered, 3),
                10,
                false,
                R::Invalid,
                Some((Delivered, 4)),
                1,
            ),
            (
                otp(Delivered, 4),
                10,
                false,
                R::Locked,
                Some((Locked, 5)),
                0,
            ),
            (
                otp(Delivered, 4),
                10,
                true,
                R::Verified,
                Some((Verified, 5)),
                0,
            ),
            (otp(Delivered, 5), 10, true, R::Locked, Some((Locked, 5)), 0),
            (otp(Delivered, 0), 1_000, true, R::Expired, None, 5),
            (otp(Verified, 1), 10, true, R::Invalid, None, 4),
            (otp(Locked, 5), 10, true, R::Locked, None, 0),
        ];
        for (i, (stored, now, ok, result, update, remaining)) in table.into_iter().enumerate() {
            let d = decide(&stored, now, || ok);
            assert_eq!(
                (d.result, d.update, d.attempts_remaining),
                (result, update, remaining),
                "case {i}"
            );
        }
        assert_eq!(
            decide(&otp(Verified, 1), 10, || true).reason,
            Some("already_used")
        );
    }

    #[test]
    fn no_comparison_when_the_code_cannot_be_accepted() {
        for stored in [
            otp(OtpState::Verified, 1),
            otp(OtpState::Locked, 5),
            otp(OtpState::Delivered, 5),
        ] {
            decide(&stored, 10, || panic!("compared"));
        }
        decide(&otp(OtpState::Delivered, 0), 2_000, || panic!("compared"));
    }
}
