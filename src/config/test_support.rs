//! Helpers shared by the config tests: parse a text and assert its errors, write files.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

/// A valid pool with one backend, to append after the part under test.
pub(super) const POOL: &str = "[[pools.push.backends]]\nname = \"w1\"\naddr = \"10.0.0.1:9000\"\n";

pub(super) fn errors(text: &str) -> Vec<ConfigError> {
    match Config::parse(text, None) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(e) => e.errors(),
    }
}

/// Asserts exactly one error, at `line:col`, whose message contains `needle`.
#[track_caller]
pub(super) fn assert_error(text: &str, line: usize, col: usize, needle: &str) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let e = &errors[0];
    assert_eq!((e.line, e.col), (line, col), "wrong position: {e}");
    assert!(
        e.message.contains(needle),
        "{e:?} does not contain {needle:?}"
    );
}

/// Asserts one error for `text` followed by [`POOL`].
#[track_caller]
pub(super) fn assert_pool_error(text: &str, line: usize, col: usize, needle: &str) {
    assert_error(&format!("{text}{POOL}"), line, col, needle);
}

pub(super) fn ok(text: &str) -> Config {
    match Config::parse(text, None) {
        Ok(config) => config,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

/// A real PEM certificate, usable as a CA bundle.
pub(super) fn ca_pem() -> String {
    rcgen::generate_simple_self_signed(vec!["worker.internal".to_string()])
        .expect("test certificate")
        .cert
        .pem()
}

/// Writes a matching certificate and key under `dir`.
pub(super) fn write_pair(dir: &Path, cert: &str, key: &str) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("test certificate");
    write(dir, cert, &ck.cert.pem());
    write(dir, key, &ck.key_pair.serialize_pem());
}

pub(super) fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dir");
    }
    std::fs::write(&path, contents).expect("write file");
    path
}
