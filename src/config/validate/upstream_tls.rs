//! `[pools.NAME.upstream_tls]`: TLS to the workers; the CA bundle is loaded here so that one
//! that does not parse is a config error at its key.

use std::net::IpAddr;
use std::sync::Arc;

use toml::Spanned;

use super::{span_of, FileKey, Validator};
use crate::config::syntax::is_dns_name;
use crate::config::{limits, raw, UpstreamTlsConfig};
use crate::tls::{tls_fingerprint, upstream_client_config};

impl Validator<'_> {
    /// `[pools.NAME.upstream_tls]`; None when the CA bundle does not load (an error is recorded).
    pub(super) fn upstream_tls(
        &mut self,
        pool: &str,
        node: &Spanned<raw::UpstreamTls>,
    ) -> Option<UpstreamTlsConfig> {
        let t = node.get_ref();
        let ca_name = format!("pools.{pool}.upstream_tls.ca");
        let ca = self.file(FileKey {
            name: &ca_name,
            value: t.ca.as_ref(),
            table: span_of(node),
        });
        let server_name = t.server_name.as_ref().map(|value| {
            let name = value.get_ref();
            if !is_dns_name(name) && name.parse::<IpAddr>().is_err() {
                self.error(
                    span_of(value),
                    format!(
                        "pools.{pool}.upstream_tls.server_name \"{name}\" is not a DNS name or \
                         an IP address"
                    ),
                );
            }
            name.clone()
        });
        // An unreadable file was reported by `file`; a config with errors is never returned,
        // so `None` here only stands in until validation fails.
        let pem = crate::files::read(&ca, limits::MAX_NAMED_FILE_BYTES).ok()?;
        match upstream_client_config(&pem) {
            Ok(client) => Some(UpstreamTlsConfig {
                fingerprint: tls_fingerprint(&pem, server_name.as_deref()),
                ca,
                server_name,
                client: Arc::new(client),
            }),
            Err(problem) => {
                if let Some(value) = t.ca.as_ref() {
                    self.error(
                        span_of(value),
                        format!("{ca_name} file \"{}\" {problem}", ca.display()),
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn upstream_tls_needs_a_readable_ca() {
        assert_pool_error(
            "[pools.push.upstream_tls]\nserver_name = \"worker.internal\"\n",
            1,
            1,
            "pools.push.upstream_tls.ca is required",
        );
        assert_pool_error(
            "[pools.push.upstream_tls]\nca = \"/nonexistent/ca.pem\"\n",
            2,
            6,
            "pools.push.upstream_tls.ca file \"/nonexistent/ca.pem\" cannot be read",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = write(dir.path(), "ca.pem", &ca_pem());
        assert_pool_error(
            &format!(
                "[pools.push.upstream_tls]\nca = \"{}\"\nserver_name = \"a b\"\n",
                ca.display()
            ),
            3,
            15,
            "server_name \"a b\" is not a DNS name or an IP address",
        );
        assert_pool_error(
            &format!(
                "[pools.push.upstream_tls]\nca = \"{}\"\n",
                dir.path().display()
            ),
            2,
            6,
            "is a directory",
        );
        let junk = write(dir.path(), "junk.pem", "not a certificate");
        assert_pool_error(
            &format!("[pools.push.upstream_tls]\nca = \"{}\"\n", junk.display()),
            2,
            6,
            "holds no PEM certificate",
        );
    }
}
