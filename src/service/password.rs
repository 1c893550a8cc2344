//! Salted argon2id password hashes. Slow on purpose: called on the pool only.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

use crate::config::HashCost;

#[derive(Debug, Clone)]
pub(crate) struct Hasher {
    params: Params,
    /// Verified against when the user does not exist, so a login takes as long either way.
    decoy: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HashError {
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
    #[error("no random salt: {0}")]
    Random(#[source] getrandom::Error),
    #[error("password hashing failed: {0}")]
    Hash(#[source] argon2::password_hash::Error),
}

impl Hasher {
    pub(crate) fn new(cost: HashCost) -> Result<Hasher, HashError> {
        let params = Params::new(cost.memory_kib, cost.iterations, 1, None).map_err(HashError::Params)?;
        let mut hasher = Hasher { params, decoy: String::new() };
        hasher.decoy = hasher.hash("decoy")?;
        Ok(hasher)
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// A PHC string (`$argon2id$v=19$m=…`) with a fresh random salt.
    pub(crate) fn hash(&self, password: &str) -> Result<String, HashError> {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt).map_err(HashError::Random)?;
        let salt = SaltString::encode_b64(&salt).map_err(HashError::Hash)?;
        let hash = self.argon2().hash_password(password.as_bytes(), &salt).map_err(HashError::Hash)?;
        Ok(hash.to_string())
    }

    /// Checks `password` against a stored PHC string; a malformed one never matches. The cost
    /// is the one stored with the hash, so raising the configured cost keeps old accounts valid.
    pub(crate) fn verify(&self, password: &str, phc: Option<&str>) -> bool {
        let Ok(parsed) = PasswordHash::new(phc.unwrap_or(&self.decoy)) else {
            return false;
        };
        self.argon2().verify_password(password.as_bytes(), &parsed).is_ok() && phc.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_and_verify() {
        let h = Hasher::new(HashCost { memory_kib: 64, iterations: 1 }).unwrap();
        let (a, b) = (h.hash("pw").unwrap(), h.hash("pw").unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(h.verify("pw", Some(&a)));
        assert!(!h.verify("px", Some(&a)));
        assert!(!h.verify("pw", Some("plain")));
        assert!(!h.verify("decoy", None));
    }
}
