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

    /// Makes a login for an unknown id cost what a wrong password costs for most accounts:
    /// the decoy gets the cost most of `samples` (stored hashes) were made with, which lags
    /// the configured one after a cost change until their logins upgrade them.
    pub(crate) fn calibrate(&mut self, samples: &[String]) -> Result<(), HashError> {
        let mut seen: std::collections::HashMap<(u32, u32, u32), usize> = std::collections::HashMap::new();
        for phc in samples {
            if let Some(p) = params_of(phc) {
                *seen.entry((p.m_cost(), p.t_cost(), p.p_cost())).or_default() += 1;
            }
        }
        let Some(((m, t, p), _)) = seen.into_iter().max_by_key(|&(cost, n)| (n, cost)) else { return Ok(()) };
        if (m, t, p) == (self.params.m_cost(), self.params.t_cost(), self.params.p_cost()) {
            return Ok(());
        }
        let params = Params::new(m, t, p, None).map_err(HashError::Params)?;
        let decoy = Hasher { params, decoy: String::new() }.hash("decoy")?;
        log::info!("most stored password hashes cost m={m} t={t} p={p}: a login for an unknown id costs the same");
        self.decoy = decoy;
        Ok(())
    }

    /// Whether a stored hash was made with another cost than the configured one (it is
    /// made again at the user's next successful login).
    pub(crate) fn outdated(&self, phc: &str) -> bool {
        params_of(phc).is_some_and(|p| {
            (p.m_cost(), p.t_cost(), p.p_cost()) != (self.params.m_cost(), self.params.t_cost(), self.params.p_cost())
        })
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

fn params_of(phc: &str) -> Option<Params> {
    Params::try_from(&PasswordHash::new(phc).ok()?).ok()
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

    #[test]
    fn an_older_cost_is_outdated_and_sets_the_decoy_while_most_hashes_have_it() {
        let old = Hasher::new(HashCost { memory_kib: 128, iterations: 2 }).unwrap();
        let mut new = Hasher::new(HashCost { memory_kib: 64, iterations: 1 }).unwrap();
        let stored: Vec<String> = (0..3).map(|_| old.hash("pw").unwrap()).chain([new.hash("pw").unwrap()]).collect();
        assert!(new.outdated(&stored[0]) && !new.outdated(&stored[3]));
        assert!(new.verify("pw", Some(&stored[0])), "an old hash still verifies");
        new.calibrate(&stored).unwrap();
        assert_eq!(params_of(&new.decoy).map(|p| (p.m_cost(), p.t_cost())), Some((128, 2)));
    }
}
