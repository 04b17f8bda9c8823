//! Whole-file tests: every key at once, defaults, TOML syntax and serde errors, I/O errors.

use super::test_support::*;
use super::*;

#[test]
fn full_config_with_every_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_pair(dir.path(), "certs/push.pem", "certs/push.key");
    write(dir.path(), "certs/workers-ca.pem", &ca_pem());
    write(dir.path(), "admin.token", "  s3cret\n");
    let path = write(
        dir.path(),
        "syncgate.toml",
        r#"
[server]
listen = ["127.0.0.1:8080", "[::1]:8081"]
worker_threads = 4
header_read_timeout = "5s"
request_timeout = "1m"
max_request_body = "512KiB"
max_connections = 20000
drain_timeout = "250ms"
idle_timeout = "20s"

[server.tls]
listen = ["0.0.0.0:8443"]
cert = "certs/push.pem"
key = "certs/push.key"

[admin]
listen = "0.0.0.0:9901"
token_file = "admin.token"
allowed_hosts = ["admin.example.com"]

[pools.push]
balance = "hash"
hash_header = "X-Account-Key"
slow_start = "0s"
retries = 3

[pools.push.probe]
path = "/ready?deep=1"
interval = "2s"
timeout = "2s"
rise = 3
fall = 4
contract = "status"
max_generation_lag = 0
min_key_ratio = 1

[pools.push.guard]
statuses = [401, 403, 500]
max_replay_body = 4096
eject_after = 5
eject_window = "30s"
consecutive_connect_failures = 0
consecutive_5xx = 7
max_ejection_percent = 100
retry_budget_ratio = 0.5
retry_budget_min_per_sec = 20
retry_budget_window = "1m"

[pools.push.upstream_tls]
ca = "certs/workers-ca.pem"
server_name = "worker.internal"

[[pools.push.backends]]
name = "worker-1"
addr = "10.0.0.11:9000"
weight = 1000

[[pools.push.backends]]
name = "worker_2.b"
addr = "10.0.0.12:9000"

[pools.other]
balance = "round_robin"
backends = [{ name = "o1", addr = "10.0.1.1:80", weight = 2 }]

[[routes]]
host = "Push.Example.com:443"
path_prefix = "/v1"
pool = "push"

[[routes]]
host = "*.example.com"
pool = "other"

[[routes]]
pool = "push"
"#,
    );
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => panic!("unexpected errors:\n{e}"),
    };
    assert_eq!(config.source.as_deref(), Some(path.as_path()));

    let s = &config.server;
    assert_eq!(
        s.listen,
        vec![
            "127.0.0.1:8080".parse::<SocketAddr>().expect("addr"),
            "[::1]:8081".parse().expect("addr")
        ]
    );
    assert_eq!(s.worker_threads, 4);
    assert_eq!(s.header_read_timeout, Duration::from_secs(5));
    assert_eq!(s.request_timeout, Duration::from_secs(60));
    assert_eq!(s.max_request_body, 512 * 1024);
    assert_eq!(s.max_connections, 20_000);
    assert_eq!(s.drain_timeout, Duration::from_millis(250));
    assert_eq!(s.idle_timeout, Duration::from_secs(20));
    let tls = s.tls.as_ref().expect("tls");
    assert_eq!(
        tls.listen,
        vec!["0.0.0.0:8443".parse::<SocketAddr>().expect("addr")]
    );
    assert_eq!(tls.cert, dir.path().join("certs/push.pem"));
    assert_eq!(tls.key, dir.path().join("certs/push.key"));

    assert_eq!(config.admin.listen, "0.0.0.0:9901".parse().expect("addr"));
    assert_eq!(
        config.admin.token_file,
        Some(dir.path().join("admin.token"))
    );
    assert_eq!(config.admin.token, Some(AdminToken("s3cret".to_owned())));
    assert_eq!(config.admin.allowed_hosts, ["admin.example.com"]);

    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["other", "push"], "pools are sorted by name");
    let other = &config.pools[0];
    assert_eq!(other.balance, Balance::RoundRobin);
    assert_eq!(
        other.backends,
        vec![BackendConfig {
            name: "o1".to_owned(),
            addr: "10.0.1.1:80".parse().expect("addr"),
            weight: 2,
        }]
    );
    let push = &config.pools[1];
    assert_eq!(push.balance, Balance::Hash);
    assert_eq!(push.hash_header.as_str(), "x-account-key");
    assert_eq!(push.slow_start, Duration::ZERO);
    assert_eq!(push.retries, 3);
    let probe = &push.probe;
    assert_eq!(probe.path, "/ready?deep=1");
    assert_eq!(probe.interval, Duration::from_secs(2));
    assert_eq!(probe.timeout, Duration::from_secs(2));
    assert_eq!((probe.rise, probe.fall), (3, 4));
    assert_eq!(probe.contract, Contract::Status);
    assert_eq!(probe.max_generation_lag, 0);
    assert!((probe.min_key_ratio - 1.0).abs() < f64::EPSILON);
    let guard = &push.guard;
    assert_eq!(
        guard.statuses,
        vec![
            StatusCode::UNAUTHORIZED,
            StatusCode::FORBIDDEN,
            StatusCode::INTERNAL_SERVER_ERROR
        ]
    );
    assert_eq!(guard.max_replay_body, 4096);
    assert_eq!(guard.eject_after, 5);
    assert_eq!(guard.eject_window, Duration::from_secs(30));
    assert_eq!(guard.consecutive_connect_failures, 0);
    assert_eq!(guard.consecutive_5xx, 7);
    assert_eq!(guard.max_ejection_percent, 100);
    assert!((guard.retry_budget_ratio - 0.5).abs() < f64::EPSILON);
    assert_eq!(guard.retry_budget_min_per_sec, 20);
    assert_eq!(guard.retry_budget_window, Duration::from_secs(60));
    let upstream = push.upstream_tls.as_ref().expect("upstream_tls");
    assert_eq!(upstream.ca, dir.path().join("certs/workers-ca.pem"));
    assert_eq!(upstream.server_name.as_deref(), Some("worker.internal"));
    assert_eq!(push.backends.len(), 2);
    assert_eq!(push.backends[0].name, "worker-1");
    assert_eq!(push.backends[0].weight, 1000);
    assert_eq!(push.backends[1].name, "worker_2.b");
    assert_eq!(push.backends[1].weight, 1);

    assert_eq!(config.routes.len(), 3);
    assert_eq!(
        config.routes[0].host,
        Some(HostMatch::Exact("push.example.com".to_owned()))
    );
    assert_eq!(config.routes[0].path_prefix, "/v1");
    assert_eq!(config.routes[0].pool, "push");
    assert_eq!(
        config.routes[1].host,
        Some(HostMatch::Wildcard(".example.com".to_owned()))
    );
    assert_eq!(config.routes[1].path_prefix, "/");
    assert_eq!(config.routes[1].pool, "other");
    assert_eq!(config.routes[2].host, None);
}

#[test]
fn defaults_apply_and_a_single_pool_gets_a_catch_all_route() {
    let config = ok(POOL);
    assert_eq!(config.source, None);
    let s = &config.server;
    assert_eq!(
        s.listen,
        vec!["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")]
    );
    assert_eq!(s.worker_threads, 0);
    assert_eq!(s.header_read_timeout, Duration::from_secs(10));
    assert_eq!(s.request_timeout, Duration::from_secs(30));
    assert_eq!(s.max_request_body, 8 * 1024 * 1024);
    assert_eq!(s.max_connections, 10_000);
    assert_eq!(s.drain_timeout, Duration::from_secs(30));
    assert_eq!(s.idle_timeout, Duration::from_secs(75));
    assert!(s.tls.is_none());
    assert_eq!(config.admin.listen, "127.0.0.1:9901".parse().expect("addr"));
    assert_eq!(config.admin.token_file, None);
    assert_eq!(config.admin.token, None);
    assert!(config.admin.allowed_hosts.is_empty());

    assert_eq!(config.pools.len(), 1);
    let pool = &config.pools[0];
    assert_eq!(pool.name, "push");
    assert_eq!(pool.balance, Balance::P2c);
    assert_eq!(pool.hash_header, http::header::AUTHORIZATION);
    assert_eq!(pool.slow_start, Duration::from_secs(10));
    assert_eq!(pool.retries, 2);
    let probe = &pool.probe;
    assert_eq!(probe.path, "/ready");
    assert_eq!(probe.interval, Duration::from_secs(1));
    assert_eq!(probe.timeout, Duration::from_millis(500));
    assert_eq!((probe.rise, probe.fall), (2, 2));
    assert_eq!(probe.contract, Contract::KeySync);
    assert_eq!(probe.max_generation_lag, 10);
    assert!((probe.min_key_ratio - 0.98).abs() < f64::EPSILON);
    let guard = &pool.guard;
    assert_eq!(
        guard.statuses,
        vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN]
    );
    assert_eq!(guard.max_replay_body, 1024 * 1024);
    assert_eq!(guard.eject_after, 3);
    assert_eq!(guard.eject_window, Duration::from_secs(10));
    assert_eq!(guard.consecutive_connect_failures, 5);
    assert_eq!(guard.consecutive_5xx, 0);
    assert_eq!(guard.max_ejection_percent, 50);
    assert!((guard.retry_budget_ratio - 0.2).abs() < f64::EPSILON);
    assert_eq!(guard.retry_budget_min_per_sec, 10);
    assert_eq!(guard.retry_budget_window, Duration::from_secs(10));
    assert!(pool.upstream_tls.is_none());
    assert_eq!(
        pool.backends,
        vec![BackendConfig {
            name: "w1".to_owned(),
            addr: "10.0.0.1:9000".parse().expect("addr"),
            weight: 1,
        }]
    );

    assert_eq!(config.routes.len(), 1);
    let route = &config.routes[0];
    assert_eq!(route.host, None);
    assert_eq!(route.path_prefix, "/");
    assert_eq!(route.pool, "push");
}

#[test]
fn implied_tables_and_dotted_keys_are_accepted() {
    let config = ok("[server]\nlisten = [\"127.0.0.1:1\"]\n\
         [pools]\npush.retries = 0\npush.backends = [{name = \"a\", addr = \"10.0.0.1:1\"}]\n");
    assert_eq!(config.pools[0].retries, 0);
    assert_eq!(config.pools[0].backends.len(), 1);
    // An implied [server.tls] still reports its missing keys (at the table's first key).
    let errors = errors("[server]\ntls.listen = [\"127.0.0.1:8443\"]\n");
    assert!(errors
        .iter()
        .any(|e| e.message.contains("server.tls.cert is required")));
}

#[test]
fn a_table_implied_by_a_dotted_key_is_reported_at_its_name() {
    // `tls` in `tls.listen`: line 2, column 1.
    let dotted = errors(&format!(
        "[server]\ntls.listen = [\"127.0.0.1:8443\"]\n{POOL}"
    ));
    let found: Vec<_> = dotted
        .iter()
        .map(|e| (e.line, e.col, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        vec![
            (2, 1, "server.tls.cert is required"),
            (2, 1, "server.tls.key is required"),
        ]
    );
    // `tls` in `server.tls.listen` at the top level: line 1, column 8.
    let top = errors(&format!("server.tls.listen = [\"127.0.0.1:8443\"]\n{POOL}"));
    let found: Vec<_> = top.iter().map(|e| (e.line, e.col)).collect();
    assert_eq!(found, vec![(1, 8), (1, 8)], "{top:?}");
    assert_pool_error(
        "[pools.push]\nupstream_tls.server_name = \"worker.internal\"\n",
        2,
        1,
        "pools.push.upstream_tls.ca is required",
    );
}

#[test]
fn toml_syntax_error_has_position() {
    let missing_comma = errors("[server]\nlisten = [\"127.0.0.1:8080\" \"127.0.0.1:8081\"]\n");
    assert_eq!(missing_comma.len(), 1, "{missing_comma:?}");
    let e = &missing_comma[0];
    assert_eq!((e.line, e.col), (2, 28), "{e}");
    assert_eq!(
        e.message,
        "missing comma between array elements, expected `,`"
    );
    let unclosed = errors("[server\nlisten = []\n");
    assert_eq!(unclosed.len(), 1, "{unclosed:?}");
    let e = &unclosed[0];
    assert_eq!((e.line, e.col), (1, 8), "{e}");
    assert_eq!(e.file, "<config>");
}

#[test]
fn unknown_key_has_position() {
    assert_error(
        "[server]\nlisten = []\n\n[pools.push.probe]\npath = \"/ready\"\nintervall = \"1s\"\n",
        6,
        1,
        "unknown field `intervall`",
    );
    assert_error("colour = 1\n", 1, 1, "unknown field `colour`");
}

#[test]
fn wrong_type_has_position() {
    assert_pool_error("[server]\nworker_threads = \"4\"\n", 2, 18, "invalid type");
    assert_pool_error("[server]\nrequest_timeout = 30\n", 2, 19, "invalid type");
}

#[test]
fn io_errors_and_display() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing).expect_err("missing file");
    assert!(matches!(err, LoadError::Io { .. }));
    let errors = err.errors();
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].line, errors[0].col), (1, 1));
    assert_eq!(errors[0].file, missing.display().to_string());
    assert!(err
        .to_string()
        .starts_with(&format!("{}: ", missing.display())));

    let err = Config::parse("[pools.p]\n", Some(Path::new("/etc/sg.toml"))).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "/etc/sg.toml:1:8: pool \"p\" has no backends; add at least one [[pools.p.backends]]"
    );
    let err = Config::parse("[pools.p]\nbackends = [{}]\n", None).expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "<config>:2:13: backend #1 in pool \"p\" has no name; set name = \"...\"\n\
         <config>:2:13: backend #1 in pool \"p\" has no addr; set addr = \"IP:port\""
    );
}

#[test]
fn every_number_and_duration_has_a_range_that_check_names() {
    let cases = [
        (
            "[server]\nrequest_timeout = \"300000000000y\"\n",
            19,
            "server.request_timeout must be at most 24h (got \"300000000000y\")",
        ),
        (
            "[server]\nheader_read_timeout = \"300000000000y\"\n",
            23,
            "server.header_read_timeout must be at most 24h",
        ),
        (
            "[server]\nidle_timeout = \"25h\"\n",
            16,
            "server.idle_timeout must be at most 24h",
        ),
        (
            "[server]\ndrain_timeout = \"999d\"\n",
            17,
            "server.drain_timeout must be at most 24h",
        ),
        (
            "[server]\nrequest_timeout = \"500us\"\n",
            19,
            "server.request_timeout must be at least 1ms (got \"500us\")",
        ),
        (
            "[server]\nmax_connections = 9223372036854775807\n",
            19,
            "server.max_connections must be between 1 and 1000000 (got 9223372036854775807)",
        ),
        (
            "[server]\nmax_request_body = \"2048GiB\"\n",
            20,
            "server.max_request_body must be at most 1 TiB (got 2199023255552 bytes)",
        ),
        (
            "[pools.push]\nslow_start = \"2d\"\n",
            14,
            "pools.push.slow_start must be at most 24h",
        ),
        (
            "[pools.push]\nretries = 101\n",
            11,
            "pools.push.retries must be at most 100 (got 101)",
        ),
        (
            "[pools.push.probe]\ninterval = \"1ns\"\n",
            12,
            "pools.push.probe.interval must be at least 10ms (got \"1ns\")",
        ),
        (
            "[pools.push.probe]\ninterval = \"2h\"\n",
            12,
            "pools.push.probe.interval must be at most 1h (got \"2h\")",
        ),
        (
            "[pools.push.probe]\ninterval = \"1s\"\ntimeout = \"10us\"\n",
            11,
            "pools.push.probe.timeout must be at least 1ms",
        ),
        (
            "[pools.push.probe]\nrise = 1001\n",
            8,
            "pools.push.probe.rise must be between 1 and 1000",
        ),
        (
            "[pools.push.probe]\nmax_generation_lag = 4294967296\n",
            22,
            "pools.push.probe.max_generation_lag must be at most 4294967295",
        ),
        (
            "[pools.push.guard]\nmax_replay_body = \"2GiB\"\n",
            19,
            "pools.push.guard.max_replay_body must be at most 1 GiB (got 2147483648 bytes)",
        ),
        (
            "[pools.push.guard]\neject_window = \"48h\"\n",
            16,
            "pools.push.guard.eject_window must be at most 24h",
        ),
        (
            "[pools.push.guard]\neject_after = 1001\n",
            15,
            "between 1 and 1000",
        ),
        (
            "[pools.push.guard]\nconsecutive_connect_failures = 1000001\n",
            32,
            "must be at most 1000000",
        ),
        (
            "[pools.push.guard]\nretry_budget_min_per_sec = 1000001\n",
            28,
            "must be at most 1000000",
        ),
        (
            "[pools.push.guard]\nretry_budget_window = \"2m\"\n",
            23,
            "pools.push.guard.retry_budget_window must be at most 1m",
        ),
        (
            "[pools.push.guard]\nretry_budget_window = \"500ms\"\n",
            23,
            "pools.push.guard.retry_budget_window must be at least 1s",
        ),
    ];
    for (text, col, needle) in cases {
        let all = errors(&format!("{text}{POOL}"));
        assert_eq!(all.len(), 1, "{text}: {all:#?}");
        let line = text.lines().count();
        assert_eq!((all[0].line, all[0].col), (line, col), "{text}: {}", all[0]);
        assert!(all[0].message.contains(needle), "{text}: {}", all[0]);
    }
    // The bounds themselves are accepted.
    let config = ok(&format!(
        "[server]\nrequest_timeout = \"24h\"\nmax_connections = 1000000\n\
         [pools.push.probe]\ninterval = \"10ms\"\ntimeout = \"1ms\"\n{POOL}"
    ));
    assert_eq!(config.server.request_timeout, Duration::from_secs(86_400));
    assert_eq!(config.pools[0].probe.interval, Duration::from_millis(10));
}

#[test]
fn invalid_utf8_is_reported_at_its_position() {
    let err =
        Config::parse_bytes(b"[server]\nlisten = [\"\xc3\xa4\xff\"]\n", None).expect_err("invalid");
    let errors = err.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].line, errors[0].col), (2, 13), "{}", errors[0]);
    assert_eq!(
        errors[0].message,
        "invalid UTF-8 (byte 0xff); a config file must be UTF-8"
    );
}

#[test]
fn control_and_bidi_characters_from_the_file_are_escaped_in_errors() {
    // A forged second error line, and a right-to-left override that would reorder the text.
    let all =
        errors("[server]\nlisten = [\"1\\r\\n<config>:1:1: all good\"]\n[pools.\"a\u{202e}b\"]\n");
    let text = LoadError::Invalid(all.clone()).to_string();
    assert!(!text.contains('\r') && !text.contains('\u{202e}'), "{text}");
    assert_eq!(text.lines().count(), all.len(), "{text}");
    assert!(text.contains("\\r\\n<config>:1:1: all good"), "{text}");
    assert!(text.contains("pool name \"a\\u{202e}b\""), "{text}");
}

#[test]
fn many_errors_are_all_kept_but_only_the_first_hundred_printed() {
    let mut text = String::new();
    for i in 0..150 {
        text.push_str(&format!(
            "[[pools.p.backends]]\nname = \"w{i}\"\naddr = \"nope\"\n"
        ));
    }
    let err = Config::parse(&text, None).expect_err("invalid");
    assert_eq!(err.errors().len(), 150);
    let shown = err.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 101, "{shown}");
    assert!(lines[0].starts_with("<config>:3:8: "), "{}", lines[0]);
    assert!(lines[99].starts_with("<config>:300:8: "), "{}", lines[99]);
    assert_eq!(lines[100], "... and 50 more errors");
}

#[test]
fn errors_on_one_long_line_get_their_own_columns() {
    // Every backend on one line: the positions are found in one pass, not one per error.
    let entries: Vec<String> = (0..5)
        .map(|i| format!("{{name = \"w{i}\", addr = \"ä{i}\"}}"))
        .collect();
    let line = format!("backends = [{}]", entries.join(", "));
    let text = format!("[pools.p]\n{line}\n");
    let found: Vec<(usize, usize)> = errors(&text).iter().map(|e| (e.line, e.col)).collect();
    let expected: Vec<(usize, usize)> = line
        .match_indices("\"ä")
        .map(|(at, _)| (2, line[..at].chars().count() + 1))
        .collect();
    assert_eq!(expected.len(), 5);
    assert_eq!(found, expected);
}

#[test]
fn the_config_file_itself_must_be_a_bounded_regular_file() {
    let err = Config::load(Path::new("/dev/zero")).expect_err("a device");
    assert_eq!(err.to_string(), "/dev/zero: is not a regular file");
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.toml");
    let file = std::fs::File::create(&big).expect("create");
    file.set_len(limits::MAX_CONFIG_BYTES + 1).expect("grow");
    let err = Config::load(&big).expect_err("too large");
    assert!(
        err.to_string()
            .ends_with("is larger than 16 MiB (the limit)"),
        "{err}"
    );
}

#[test]
fn every_file_the_config_names_must_be_a_bounded_regular_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("token.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let big = write(dir.path(), "big.pem", &"x".repeat((1 << 20) + 1));
    let cases = [
        ("[admin]\ntoken_file = \"/dev/zero\"\n", 2, 14,
         "admin.token_file \"/dev/zero\" is not a regular file"),
        // A blocking open of a FIFO without a writer would hang here (and wedge a reload).
        (&format!("[admin]\ntoken_file = \"{}\"\n", fifo.display()), 2, 14, "is not a regular file"),
        (&format!("[admin]\ntoken_file = \"{}\"\n", big.display()), 2, 14,
         "is larger than 1 MiB (the limit)"),
        ("[pools.push.upstream_tls]\nca = \"/dev/zero\"\n", 2, 6,
         "pools.push.upstream_tls.ca file \"/dev/zero\" is not a regular file"),
        ("[server.tls]\nlisten = [\"127.0.0.1:8443\"]\ncert = \"/dev/zero\"\nkey = \"/dev/zero\"\n", 3, 8,
         "server.tls.cert file \"/dev/zero\" is not a regular file"),
    ];
    for (text, line, col, needle) in cases {
        let all = errors(&format!("{text}{POOL}"));
        let e = &all[0];
        assert_eq!((e.line, e.col), (line, col), "{text}: {e}");
        assert!(e.message.contains(needle), "{text}: {e}");
    }
}
