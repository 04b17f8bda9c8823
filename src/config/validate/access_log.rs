//! `[server.access_log]`: whether the access log is written, where, and in which format.
//!
//! The file itself is opened when syncgate starts (or when a reload names a new one), not
//! here: `syncgate check` creates nothing. What can be known without writing is checked: the
//! directory exists, and an existing path is a regular file (a FIFO would block the writer, a
//! directory or a device is a mistake).

use std::path::Path;

use toml::Spanned;

use super::{span_of, Validator};
use crate::config::{raw, AccessLogConfig, AccessLogFormat, AccessLogTarget};

impl Validator<'_> {
    /// `[server.access_log]`; defaults when the table is absent.
    pub(super) fn access_log(&mut self, node: Option<&Spanned<raw::AccessLog>>) -> AccessLogConfig {
        let absent = raw::AccessLog::default();
        let a = node.map_or(&absent, Spanned::get_ref);
        let target = match &a.path {
            None => AccessLogTarget::Stderr,
            Some(value) => self.access_log_path(value),
        };
        AccessLogConfig {
            enabled: a.enabled.as_ref().is_none_or(|v| *v.get_ref()),
            target,
            format: self.choice(
                "server.access_log.format",
                a.format.as_ref(),
                AccessLogFormat::Text,
                &AccessLogFormat::ALL,
            ),
        }
    }

    fn access_log_path(&mut self, value: &Spanned<String>) -> AccessLogTarget {
        let text = value.get_ref();
        if text == "-" {
            return AccessLogTarget::Stderr;
        }
        if text.is_empty() {
            self.error(
                span_of(value),
                "server.access_log.path must not be empty (\"-\" is stderr)",
            );
            return AccessLogTarget::Stderr;
        }
        let path = self.resolve(text);
        if let Some(problem) = path_problem(&path) {
            self.error(
                span_of(value),
                format!("server.access_log.path \"{}\" {problem}", path.display()),
            );
        }
        AccessLogTarget::File(path)
    }
}

/// Why `path` cannot be the access log, as the end of a sentence that names it; None when it
/// can (a regular file, or none yet in an existing directory).
fn path_problem(path: &Path) -> Option<String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Some(format!(
                "is in \"{}\", which is not a directory",
                dir.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Some(format!("is in \"{}\", which does not exist", dir.display()))
        }
        Err(e) => {
            return Some(format!(
                "is in \"{}\", which cannot be read: {e}",
                dir.display()
            ))
        }
    }
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => None,
        Ok(meta) if meta.is_dir() => Some("is a directory".to_owned()),
        Ok(_) => Some("is not a regular file".to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("cannot be checked: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;
    use crate::config::{AccessLogFormat, AccessLogTarget, Config};

    #[test]
    fn the_access_log_is_on_by_default_as_text_on_stderr() {
        let config = ok(POOL);
        let log = &config.server.access_log;
        assert!(log.enabled);
        assert_eq!(log.target, AccessLogTarget::Stderr);
        assert_eq!(log.format, AccessLogFormat::Text);
        let config = ok(&format!(
            "[server.access_log]\nenabled = false\npath = \"-\"\nformat = \"json\"\n{POOL}"
        ));
        let log = &config.server.access_log;
        assert!(!log.enabled);
        assert_eq!(log.target, AccessLogTarget::Stderr);
        assert_eq!(log.format, AccessLogFormat::Json);
    }

    #[test]
    fn a_relative_access_log_path_resolves_against_the_config_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("logs")).expect("mkdir");
        let path = write(
            dir.path(),
            "a.toml",
            &format!("[server.access_log]\npath = \"logs/access.log\"\n{POOL}"),
        );
        let config = Config::load(&path).expect("valid");
        assert_eq!(
            config.server.access_log.target,
            AccessLogTarget::File(dir.path().join("logs/access.log"))
        );
        assert!(
            !dir.path().join("logs/access.log").exists(),
            "validation creates nothing"
        );
    }

    #[test]
    fn an_access_log_in_a_missing_directory_or_on_a_non_file_is_refused_where_it_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope/access.log");
        assert_pool_error(
            &format!("[server.access_log]\npath = \"{}\"\n", missing.display()),
            2,
            8,
            "which does not exist",
        );
        assert_pool_error(
            &format!("[server.access_log]\npath = \"{}\"\n", dir.path().display()),
            2,
            8,
            "is a directory",
        );
        assert_pool_error(
            "[server.access_log]\npath = \"/dev/null\"\n",
            2,
            8,
            "server.access_log.path \"/dev/null\" is not a regular file",
        );
        assert_pool_error(
            "[server.access_log]\npath = \"\"\n",
            2,
            8,
            "server.access_log.path must not be empty",
        );
    }

    #[test]
    fn unknown_access_log_formats_and_keys_are_errors() {
        assert_pool_error(
            "[server.access_log]\nformat = \"combined\"\n",
            2,
            10,
            "server.access_log.format \"combined\" is not one of \"text\", \"json\"",
        );
        assert_pool_error(
            "[server.access_log]\nbuffer = \"64KiB\"\n",
            2,
            1,
            "unknown field `buffer`",
        );
        assert_pool_error(
            "[server.access_log]\nenabled = \"yes\"\n",
            2,
            11,
            "invalid type",
        );
    }
}
