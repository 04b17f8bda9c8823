//! Digests that name content: hex SHA-256 of the config file and of the served certificate.
//!
//! A leaf: it imports nothing from this crate, so that both `tls` and `reload` can use it.

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
