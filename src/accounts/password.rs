//! Password hashing with argon2id at OWASP's minimum cost (m = 19 MiB, t = 2, p = 1), stored as
//! PHC strings. Hashing is slow on purpose, so callers run these functions through a
//! [`HashingPool`]: on a blocking thread, and only a few at a time.

use std::sync::{Arc, LazyLock};

use argon2::password_hash::{
    self, Decimal, Ident, Output, ParamsString, PasswordHash, PasswordHasher, PasswordVerifier,
    Salt, SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

pub const MIN_CHARS: usize = 12;
pub const MAX_CHARS: usize = 128;
const M_COST_KIB: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    #[error("the password must be at least 12 characters")]
    TooShort,
    #[error("the password must be at most 128 characters")]
    TooLong,
    #[error("password hashing failed")]
    Hash,
}

fn argon2() -> Argon2WithMemory {
    // These constants are valid argon2 parameters; `Params::DEFAULT` is the fallback that cannot fail.
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or(Params::DEFAULT);
    Argon2WithMemory {
        algorithm: Algorithm::Argon2id,
        version: Version::V0x13,
        params,
    }
}

/// Blocks (1 KiB each) reserved per hash: just over glibc's largest mmap threshold (32 MiB), see
/// [`with_blocks`].
const RESERVED_BLOCKS: usize = 33 * 1024;

/// Runs `f` with `count` argon2 memory blocks, zeroed afterwards and handed back to the OS.
///
/// Why the odd reservation: every hash needs 19 MiB. Allocated and freed at that size (what
/// `Argon2::hash_password` does), glibc's malloc raises its mmap threshold after the first free
/// and then serves the next blocks from the thread's heap, where small allocations made meanwhile
/// split the freed block; measured with the release binary, every sign-up left the process
/// 19.5 MB larger (10 sign-ups: 22 → 178 MB). Keeping one buffer per hashing thread stopped the
/// growth but kept 19.5 MB resident for good. glibc never raises the threshold for a chunk above
/// 32 MiB (`DEFAULT_MMAP_THRESHOLD_MAX`), and always maps such a chunk on its own: so the buffer
/// reserves 33 MiB of address space, of which only the 19 MiB written are ever resident, and
/// freeing it unmaps all of it. Measured: idle RSS 19.5 MB lower, and flat over repeated
/// sign-ups; the page faults add a few milliseconds to a hash that takes tens.
fn with_blocks<T>(count: usize, f: impl FnOnce(&mut [Block]) -> T) -> T {
    let mut blocks: Vec<Block> = Vec::with_capacity(count.max(RESERVED_BLOCKS));
    blocks.resize(count, Block::default());
    let result = f(&mut blocks);
    blocks.iter_mut().for_each(Zeroize::zeroize);
    result
}

/// argon2 with its memory from [`with_blocks`]. The hasher is the argon2 crate's own
/// `hash_password` with the memory passed in; verification is `password_hash`'s
/// `PasswordVerifier` (constant-time comparison of the outputs).
struct Argon2WithMemory {
    algorithm: Algorithm,
    version: Version,
    params: Params,
}

impl PasswordHasher for Argon2WithMemory {
    type Params = Params;

    fn hash_password<'a>(
        &self,
        password: &[u8],
        salt: impl Into<Salt<'a>>,
    ) -> password_hash::Result<PasswordHash<'a>> {
        let salt = salt.into();
        let mut salt_arr = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_arr)?;
        let argon = Argon2::new(self.algorithm, self.version, self.params.clone());
        let output_len = self
            .params
            .output_len()
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let output = Output::init_with(output_len, |out| {
            with_blocks(self.params.block_count(), |blocks| {
                argon.hash_password_into_with_memory(password, salt_bytes, out, blocks)
            })?;
            Ok(())
        })?;
        Ok(PasswordHash {
            algorithm: self.algorithm.ident(),
            version: Some(self.version.into()),
            params: ParamsString::try_from(&self.params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }

    fn hash_password_customized<'a>(
        &self,
        password: &[u8],
        alg_id: Option<Ident<'a>>,
        version: Option<Decimal>,
        params: Params,
        salt: impl Into<Salt<'a>>,
    ) -> password_hash::Result<PasswordHash<'a>> {
        let algorithm = alg_id
            .map(Algorithm::try_from)
            .transpose()?
            .unwrap_or_default();
        let version = version
            .map(Version::try_from)
            .transpose()?
            .unwrap_or_default();
        Argon2WithMemory {
            algorithm,
            version,
            params,
        }
        .hash_password(password, salt)
    }
}

/// Length checks happen before any hashing, so a 1 MB "password" costs nothing.
pub fn validate(password: &SecretString) -> Result<(), PasswordError> {
    let n = password.expose_secret().chars().count();
    if n < MIN_CHARS {
        return Err(PasswordError::TooShort);
    }
    if n > MAX_CHARS {
        return Err(PasswordError::TooLong);
    }
    Ok(())
}

pub fn hash(password: &SecretString) -> Result<String, PasswordError> {
    validate(password)?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2()
        .hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| PasswordError::Hash)
}

/// The result of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid { needs_rehash: bool },
    Invalid,
}

/// A hash of nothing anyone knows, verified against when the account does not exist or has no
/// password, so that "no such account" takes as long as "wrong password".
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let random = uuid::Uuid::new_v4().to_string();
    argon2()
        .hash_password(random.as_bytes(), &salt)
        .map(|h| h.to_string())
        .unwrap_or_default()
});

pub fn verify(password: &SecretString, stored: Option<&str>) -> Verdict {
    if validate(password).is_err() && password.expose_secret().chars().count() > MAX_CHARS {
        return Verdict::Invalid;
    }
    let (phc, real) = match stored {
        Some(s) => (s, true),
        None => (DUMMY_HASH.as_str(), false),
    };
    let Ok(parsed) = PasswordHash::new(phc) else {
        return Verdict::Invalid;
    };
    let ok = argon2()
        .verify_password(password.expose_secret().as_bytes(), &parsed)
        .is_ok();
    if !(ok && real) {
        return Verdict::Invalid;
    }
    Verdict::Valid {
        needs_rehash: needs_rehash(&parsed),
    }
}

/// Hashes made with an older algorithm or weaker parameters are upgraded at the next login.
fn needs_rehash(parsed: &PasswordHash<'_>) -> bool {
    if parsed.algorithm.as_str() != "argon2id" {
        return true;
    }
    match Params::try_from(parsed) {
        Ok(p) => p.m_cost() < M_COST_KIB || p.t_cost() < T_COST || p.p_cost() < P_COST,
        Err(_) => true,
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Where password hashing runs: `threads` dedicated threads at a lowered scheduling priority.
/// Each hash takes a core for tens of milliseconds and 19 MiB; run on the shared blocking pool, a
/// login storm ran as many at once as that pool has threads, side by side with the proxy's
/// workers, and took every core from them. Here at most `threads` run at once (the rest wait in
/// the queue; the login throttle limits how many arrive), and when the proxy needs a core the
/// scheduler gives it one first. The threads end when the pool is dropped.
#[derive(Clone, Debug)]
pub struct HashingPool {
    jobs: std::sync::mpsc::Sender<Job>,
}

/// The hashing threads' nice value: below the proxy's workers, so they yield to them.
const NICE: i32 = 10;

impl HashingPool {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..threads.clamp(1, 64) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("password-hash-{i}"))
                .spawn(move || {
                    crate::threads::lower_priority(NICE);
                    loop {
                        let job = queue
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .recv();
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Self { jobs })
    }

    /// One fewer than the machine's cores (at least one): the proxy always keeps a core.
    pub fn default_size() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1)
    }

    /// Runs `f` (a hash or a verification) on a hashing thread and waits for its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, crate::error::ApiError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = done.send(f());
            }))
            .map_err(|_| {
                crate::error::ApiError::internal("the password hashing threads are gone")
            })?;
        result.await.map_err(crate::error::ApiError::internal)
    }
}

/// Warms the dummy hash so the first failed login is not measurably slower than later ones.
pub fn warm_up() {
    LazyLock::force(&DUMMY_HASH);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    #[test]
    fn hash_is_argon2id_with_owasp_parameters_and_verifies() {
        let h = hash(&s("correct horse battery")).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(
            verify(&s("correct horse battery"), Some(&h)),
            Verdict::Valid {
                needs_rehash: false
            }
        );
        assert_eq!(
            verify(&s("wrong horse battery"), Some(&h)),
            Verdict::Invalid
        );
    }

    #[test]
    fn unknown_account_never_verifies() {
        assert_eq!(verify(&s("correct horse battery"), None), Verdict::Invalid);
    }

    #[test]
    fn weaker_hashes_are_flagged_for_upgrade() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        );
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let h = weak
            .hash_password(b"correct horse battery", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            verify(&s("correct horse battery"), Some(&h)),
            Verdict::Valid { needs_rehash: true }
        );
    }

    #[test]
    fn length_limits_apply_before_hashing() {
        assert_eq!(hash(&s("short")), Err(PasswordError::TooShort));
        assert_eq!(hash(&s(&"x".repeat(129))), Err(PasswordError::TooLong));
        assert_eq!(verify(&s(&"x".repeat(100_000)), None), Verdict::Invalid);
    }
}
