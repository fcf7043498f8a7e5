//! The process-wide rustls crypto provider.
//!
//! reqwest is built with `rustls-no-provider` and rustls with `ring` only: one provider in the
//! dependency graph and no `aws-lc-sys` C build. rustls then needs the provider installed before
//! the first client is built (reqwest panics otherwise), and two installed providers make the
//! first handshake panic, so everything goes through [`install_crypto_provider`].

use std::sync::Once;

/// Installs rustls' ring provider as the process default; idempotent, safe from any thread.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means a provider is already installed (by a test harness or a library): that one
        // stays, which is what rustls wants, so there is nothing to do about it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn install_is_idempotent() {
        super::install_crypto_provider();
        super::install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
