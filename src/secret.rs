//! Server-side secrets (the email pepper, the session and fingerprint keys): bytes that are
//! zeroized when the last holder drops them and never printed.

use std::fmt;
use std::sync::Arc;

use zeroize::Zeroizing;

/// A server-side secret (pepper, session key). `Debug` prints nothing of it.
#[derive(Clone)]
pub struct ServerSecret(Arc<Zeroizing<Vec<u8>>>);

impl ServerSecret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Arc::new(Zeroizing::new(bytes)))
    }
}

impl fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSecret(<redacted>)")
    }
}
