//! `[server.tls]`: the HTTPS listeners and their certificate and key, loaded here as the
//! listener will load them.

use toml::Spanned;

use super::{span_of, FileKey, Listener, Validator};
use crate::config::{raw, TlsConfig};

impl Validator<'_> {
    /// `[server.tls]`.
    pub(super) fn tls(
        &mut self,
        node: &Spanned<raw::Tls>,
        listeners: &mut Vec<Listener>,
    ) -> TlsConfig {
        let span = span_of(node);
        let t = node.get_ref();
        let listen = match &t.listen {
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.error(
                        span_of(list),
                        "server.tls.listen must name at least one address",
                    );
                }
                self.addrs("server.tls.listen", list, listeners)
            }
            None => {
                self.error(
                    span.clone(),
                    "server.tls.listen is required, e.g. listen = [\"0.0.0.0:8443\"]",
                );
                Vec::new()
            }
        };
        let before = self.errors.len();
        let cert = self.file(FileKey {
            name: "server.tls.cert",
            value: t.cert.as_ref(),
            table: span.clone(),
        });
        let key = self.file(FileKey {
            name: "server.tls.key",
            value: t.key.as_ref(),
            table: span,
        });
        // Both files are readable: load them as the listener will, so that a certificate or
        // key that does not parse or does not match fails `check` and a reload whole, at the
        // key that names the bad file.
        if self.errors.len() == before {
            if let Err(e) = crate::tls::load_certified_key(&cert, &key) {
                let at = match e {
                    crate::tls::TlsError::Key { .. } => t.key.as_ref(),
                    _ => t.cert.as_ref(),
                };
                self.error(at.and_then(span_of), format!("server.tls: {}", e));
            }
        }
        TlsConfig { listen, cert, key }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::Config;

    #[test]
    fn tls_requires_listen_cert_and_key() {
        let text = format!("[server.tls]\nlisten = []\n{POOL}");
        let all = errors(&text);
        let found: Vec<_> = all
            .iter()
            .map(|e| (e.line, e.col, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (1, 1, "server.tls.cert is required"),
                (1, 1, "server.tls.key is required"),
                (2, 10, "server.tls.listen must name at least one address"),
            ]
        );
        let no_listen = errors(&format!("[server.tls]\ncert = \"c\"\nkey = \"k\"\n{POOL}"));
        let e = &no_listen[0];
        assert_eq!((e.line, e.col), (1, 1), "{e}");
        assert!(e.message.contains("server.tls.listen is required"), "{e}");
    }

    #[test]
    fn tls_files_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "c.pem", "c");
        let path = write(
            dir.path(),
            "a.toml",
            &format!(
                "[server.tls]\nlisten = [\"0.0.0.0:8443\"]\ncert = \"c.pem\"\nkey = \"missing.key\"\n{POOL}"
            ),
        );
        let errors = Config::load(&path).expect_err("invalid").errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!((e.line, e.col), (4, 7));
        assert_eq!(e.file, path.display().to_string());
        assert!(e.message.starts_with("server.tls.key file \""), "{e}");
        assert!(e.message.contains("missing.key\" cannot be read"), "{e}");
    }

    #[test]
    fn tls_pair_must_parse_and_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            "[server.tls]\nlisten = [\"0.0.0.0:8443\"]\ncert = \"c.pem\"\nkey = \"k.pem\"\n{POOL}"
        );
        let path = write(dir.path(), "a.toml", &toml);
        let only_error = || {
            let errors = Config::load(&path).expect_err("invalid").errors();
            assert_eq!(errors.len(), 1, "{errors:?}");
            errors.into_iter().next().expect("one error")
        };
        // Not PEM at all: reported at `cert`.
        write(dir.path(), "c.pem", "c");
        write_pair(dir.path(), "other.pem", "k.pem");
        let e = only_error();
        assert_eq!((e.line, e.col), (3, 8), "{e:?}");
        assert!(e.message.contains("no PEM certificate"), "{e:?}");
        // Both parse, but the key belongs to another certificate: reported at `key`.
        write_pair(dir.path(), "c.pem", "unused.key");
        let e = only_error();
        assert_eq!((e.line, e.col), (4, 7), "{e:?}");
        assert!(
            e.message.contains("does not match the certificate"),
            "{e:?}"
        );
        // A matching pair loads.
        write_pair(dir.path(), "c.pem", "k.pem");
        assert!(Config::load(&path).is_ok());
    }

    #[test]
    fn tls_listeners_alone_are_enough() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pair(dir.path(), "c.pem", "k.pem");
        let path = write(
            dir.path(),
            "a.toml",
            &format!(
                "[server]\nlisten = []\n[server.tls]\nlisten = [\"127.0.0.1:8443\"]\n\
                 cert = \"c.pem\"\nkey = \"k.pem\"\n{POOL}"
            ),
        );
        let config = Config::load(&path).expect("valid");
        assert!(config.server.listen.is_empty());
        assert_eq!(config.server.tls.expect("tls").listen.len(), 1);
    }
}
