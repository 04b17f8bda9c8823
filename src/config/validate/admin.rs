//! `[admin]`: the admin listener and its bearer token file.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use toml::Spanned;

use super::{file_problem, span_of, Listener, Validator};
use crate::config::syntax::is_dns_name;
use crate::config::{limits, raw, AdminConfig, AdminToken};

impl Validator<'_> {
    /// `[admin]`; its listener joins `listeners` for the duplicate-address check.
    pub(super) fn admin(
        &mut self,
        node: Option<&Spanned<raw::Admin>>,
        listeners: &mut Vec<Listener>,
    ) -> AdminConfig {
        let absent = raw::Admin::default();
        let a = node.map_or(&absent, Spanned::get_ref);
        let default = SocketAddr::from((Ipv4Addr::LOCALHOST, 9901));
        let listen = match &a.listen {
            Some(value) => self.addr("admin.listen address", value),
            None => Some(default),
        };
        if let Some(addr) = listen {
            listeners.push(Listener {
                addr,
                key: "admin.listen",
                span: a.listen.as_ref().and_then(span_of),
            });
        }
        let (token_file, token) = match &a.token_file {
            Some(value) => {
                let (path, token) = self.token(value);
                (Some(path), token)
            }
            None => {
                if let (Some(addr), Some(value)) = (listen, &a.listen) {
                    if !addr.ip().is_loopback() {
                        self.error(
                            span_of(value),
                            format!("admin.listen {addr} is not loopback; set admin.token_file"),
                        );
                    }
                }
                (None, None)
            }
        };
        let allowed_hosts = match &a.allowed_hosts {
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|value| {
                    let name = value.get_ref().to_ascii_lowercase();
                    if is_dns_name(&name) {
                        Some(name)
                    } else {
                        self.error(
                            span_of(value),
                            format!(
                                "admin.allowed_hosts entry \"{}\" is not a host name (no \
                                 port, no IP address: addresses are always allowed)",
                                value.get_ref()
                            ),
                        );
                        None
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        AdminConfig {
            listen: listen.unwrap_or(default),
            token_file,
            token,
            allowed_hosts,
        }
    }

    fn token(&mut self, value: &Spanned<String>) -> (PathBuf, Option<AdminToken>) {
        if value.get_ref().is_empty() {
            self.error(span_of(value), "admin.token_file must not be empty");
            return (PathBuf::new(), None);
        }
        let path = self.resolve(value.get_ref());
        let text = crate::files::read(&path, limits::MAX_NAMED_FILE_BYTES).and_then(|bytes| {
            String::from_utf8(bytes).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "is not UTF-8 text")
            })
        });
        match text {
            Ok(text) if text.trim().is_empty() => {
                self.error(
                    span_of(value),
                    format!("admin.token_file \"{}\" is empty", path.display()),
                );
                (path, None)
            }
            Ok(text) => {
                let token = AdminToken(text.trim().to_owned());
                (path, Some(token))
            }
            Err(e) => {
                self.error(
                    span_of(value),
                    format!(
                        "admin.token_file \"{}\" {}",
                        path.display(),
                        file_problem(&e)
                    ),
                );
                (path, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::{AdminToken, Config};

    #[test]
    fn admin_bad_address() {
        assert_pool_error(
            "[admin]\nlisten = \"localhost:9901\"\n",
            2,
            10,
            "admin.listen address \"localhost:9901\" is not IP:port",
        );
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        assert_pool_error(
            "[admin]\nlisten = \"0.0.0.0:9901\"\n",
            2,
            10,
            "admin.listen 0.0.0.0:9901 is not loopback; set admin.token_file",
        );
        let config = ok(&format!("[admin]\nlisten = \"[::1]:9901\"\n{POOL}"));
        assert!(config.admin.listen.ip().is_loopback());
    }

    #[test]
    fn admin_token_file_unreadable_or_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "empty.token", " \n\t\n");
        let path = write(
            dir.path(),
            "a.toml",
            &format!("[admin]\ntoken_file = \"empty.token\"\n{POOL}"),
        );
        let errors = Config::load(&path).expect_err("invalid").errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].col), (2, 14));
        assert!(
            errors[0].message.contains("empty.token\" is empty"),
            "{}",
            errors[0]
        );

        let path = write(
            dir.path(),
            "b.toml",
            &format!("[admin]\ntoken_file = \"nope.token\"\n{POOL}"),
        );
        let errors = Config::load(&path).expect_err("invalid").errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!((errors[0].line, errors[0].col), (2, 14));
        assert!(
            errors[0].message.contains("nope.token\" cannot be read"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn allowed_hosts_are_host_names() {
        let config = ok(&format!(
            "[admin]\nallowed_hosts = [\"Admin.Example.com\", \"syncgate\"]\n{POOL}"
        ));
        assert_eq!(
            config.admin.allowed_hosts,
            ["admin.example.com", "syncgate"]
        );
        assert_pool_error(
            "[admin]\nallowed_hosts = [\"a.example:9901\"]\n",
            2,
            18,
            "admin.allowed_hosts entry \"a.example:9901\" is not a host name",
        );
    }

    #[test]
    fn admin_token_is_redacted_in_debug() {
        let token = AdminToken("hunter2".to_owned());
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }
}
