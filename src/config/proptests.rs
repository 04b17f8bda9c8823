//! Property tests of `check`'s parse and validate (issue 10, "Also build"): arbitrary bytes and
//! arbitrary TOML documents never panic, and end either in a config within every limit or in
//! errors that all carry a position in the file; positions agree with a plain count; the size
//! and duration syntax. Case counts are proptest's default (256, `PROPTEST_CASES` overrides).

use std::ops::Range;
use std::time::Duration;

use proptest::prelude::*;

use super::limits;
use super::syntax::parse_size;
use super::validate::Validator;
use super::{Config, ConfigError, LoadError};

/// Every error has a position inside the text (a line the file has, or the one after its last
/// newline) and a message without raw control or bidi characters.
fn assert_well_formed(errors: &[ConfigError], text_lines: usize) {
    assert!(!errors.is_empty());
    for e in errors {
        assert!(e.line >= 1 && e.col >= 1, "{e}");
        assert!(e.line <= text_lines + 1, "{e} beyond {text_lines} lines");
        assert!(
            !e.message
                .chars()
                .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c)),
            "{e:?}"
        );
    }
}

/// What validation promises of a config it accepts.
fn assert_within_limits(config: &Config) {
    let s = &config.server;
    for d in [
        s.header_read_timeout,
        s.request_timeout,
        s.drain_timeout,
        s.idle_timeout,
    ] {
        assert!(
            (limits::TIMEOUT.min..=limits::TIMEOUT.max).contains(&d),
            "{d:?}"
        );
    }
    assert!(limits::MAX_CONNECTIONS.contains(&(s.max_connections as i64)));
    assert!(limits::WORKER_THREADS.contains(&(s.worker_threads as i64)));
    assert!(limits::MAX_REQUEST_BODY.contains(&s.max_request_body));
    for p in &config.pools {
        assert!(p.slow_start <= limits::MAX_DURATION);
        assert!(p.probe.interval >= limits::PROBE_INTERVAL.min);
        assert!(p.probe.interval <= limits::PROBE_INTERVAL.max);
        assert!(p.probe.timeout >= limits::PROBE_TIMEOUT.min);
        assert!(p.probe.timeout <= p.probe.interval);
        assert!(p.guard.eject_window <= limits::MAX_DURATION);
        assert!(p.guard.retry_budget_window <= limits::RETRY_BUDGET_WINDOW.max);
        assert!(limits::MAX_REPLAY_BODY.contains(&p.guard.max_replay_body));
        assert!(!p.backends.is_empty());
    }
}

fn check(text: &str) {
    match Config::parse(text, None) {
        Ok(config) => assert_within_limits(&config),
        Err(e) => assert_well_formed(&e.errors(), text.lines().count()),
    }
}

/// A string value: a meaningful one, or arbitrary printable text that cannot be a host name
/// (a backend `host:port` would be resolved, and a test must not query DNS).
fn string_value() -> impl Strategy<Value = String> {
    let meaningful = prop::sample::select(vec![
        "1ns",
        "500us",
        "1ms",
        "10ms",
        "250ms",
        "2s",
        "1m",
        "24h",
        "25h",
        "300000000000y",
        "",
        "8MiB",
        "1.5KiB",
        "0B",
        "99999999999GiB",
        "2048GiB",
        "127.0.0.1:0",
        "[::1]:0",
        "10.0.0.1:9000",
        "10.0.0.1",
        "localhost:9000",
        "nope",
        "/ready",
        "ready",
        "/dev/zero",
        "/nonexistent",
        "p2c",
        "round_robin",
        "hash",
        "key-sync",
        "status",
        "push",
        "*.a.b",
        "a\u{202e}b",
        "x\r\ny",
        "ä",
    ]);
    prop_oneof![
        meaningful.prop_map(str::to_owned),
        "[ -~]{0,12}".prop_map(|s| format!("~{s}")),
    ]
}

/// A TOML value as text.
fn value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            0i64, 1, 2, 100, 101, 1000, 1001, 1_000_000, 1_000_001, -1
        ])
        .prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        string_value().prop_map(|s| format!("{s:?}")),
    ];
    scalar.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..3).prop_map(|kv| {
                let fields: Vec<String> = kv.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{{}}}", fields.join(", "))
            }),
        ]
    })
}

fn key() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "listen",
        "worker_threads",
        "header_read_timeout",
        "request_timeout",
        "max_connections",
        "token_file",
        "balance",
        "retries",
        "interval",
        "timeout",
        "rise",
        "statuses",
        "weight",
        "host",
        "pool",
        "colour",
    ])
}

/// What a key holds.
#[derive(Clone, Copy)]
enum Kind {
    Duration,
    Int,
    Size,
    Float,
    Text,
    Addr,
    Addrs,
    Texts,
    Ints,
}

fn typed(kind: Kind) -> BoxedStrategy<String> {
    let duration = prop_oneof![
        string_value(),
        "[0-9]{1,12}(ns|us|ms|s|m|h|d|y)",
        "[0-9]{1,3}(ms|s)",
    ]
    .prop_map(|s| format!("{s:?}"));
    let int = prop_oneof![
        prop::sample::select(vec![
            0i64, 1, 2, 3, 10, 100, 101, 1000, 1001, 1_000_000, 1_000_001, -1
        ]),
        any::<i64>(),
    ]
    .prop_map(|n| n.to_string());
    let addr = prop_oneof![
        prop::sample::select(vec![
            "127.0.0.1:0",
            "[::1]:0",
            "10.0.0.1:9000",
            "10.0.0.2:9000",
            "0.0.0.0:1"
        ])
        .prop_map(str::to_owned),
        string_value(),
    ]
    .prop_map(|s| format!("{s:?}"));
    let typed = match kind {
        Kind::Duration => duration.boxed(),
        Kind::Int => int.boxed(),
        Kind::Size => prop_oneof![
            int,
            "[0-9]{1,6}(B|KiB|MiB|GiB|KB)".prop_map(|s| format!("{s:?}"))
        ]
        .boxed(),
        Kind::Float => (-1.0f64..12.0).prop_map(|f| format!("{f:?}")).boxed(),
        Kind::Text => string_value().prop_map(|s| format!("{s:?}")).boxed(),
        Kind::Addr => addr.boxed(),
        Kind::Addrs => prop::collection::vec(addr, 0..3)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        Kind::Texts => prop::collection::vec(string_value().prop_map(|s| format!("{s:?}")), 0..3)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        Kind::Ints => prop::collection::vec(prop_oneof![100i64..=600, any::<i64>()], 0..4)
            .prop_map(|v| format!("{v:?}"))
            .boxed(),
    };
    // Now and then a value of any type: the serde layer's errors need positions too.
    prop_oneof![40 => typed, 1 => value()].boxed()
}

/// One table with some of its keys, each holding a value of (mostly) its own type.
fn table(header: &'static str, keys: &[(&'static str, Kind)]) -> BoxedStrategy<String> {
    let entries: Vec<BoxedStrategy<Option<String>>> = keys
        .iter()
        .map(|&(key, kind)| {
            prop::option::weighted(0.4, typed(kind))
                .prop_map(move |v| v.map(|v| format!("{key} = {v}\n")))
                .boxed()
        })
        .collect();
    entries
        .prop_map(move |entries| {
            let body: String = entries.into_iter().flatten().collect();
            format!("{header}\n{body}")
        })
        .boxed()
}

/// A document of the config's own tables (each at most once, array tables up to three times)
/// with keys from its own vocabulary, so that most documents get past the TOML and serde
/// layers into validation; now and then a stray key or a key in the wrong table.
fn document() -> impl Strategy<Value = String> {
    use Kind::*;
    let tables = vec![
        table(
            "[server]",
            &[
                ("listen", Addrs),
                ("worker_threads", Int),
                ("header_read_timeout", Duration),
                ("request_timeout", Duration),
                ("max_request_body", Size),
                ("max_connections", Int),
                ("drain_timeout", Duration),
                ("idle_timeout", Duration),
            ],
        ),
        table(
            "[server.tls]",
            &[("listen", Addrs), ("cert", Text), ("key", Text)],
        ),
        table(
            "[admin]",
            &[
                ("listen", Addr),
                ("token_file", Text),
                ("allowed_hosts", Texts),
            ],
        ),
        table(
            "[pools.push]",
            &[
                ("balance", Text),
                ("hash_header", Text),
                ("slow_start", Duration),
                ("retries", Int),
            ],
        ),
        table(
            "[pools.push.probe]",
            &[
                ("path", Text),
                ("interval", Duration),
                ("timeout", Duration),
                ("rise", Int),
                ("fall", Int),
                ("contract", Text),
                ("max_generation_lag", Int),
                ("min_key_ratio", Float),
            ],
        ),
        table(
            "[pools.push.guard]",
            &[
                ("statuses", Ints),
                ("max_replay_body", Size),
                ("eject_after", Int),
                ("eject_window", Duration),
                ("consecutive_connect_failures", Int),
                ("consecutive_5xx", Int),
                ("max_ejection_percent", Int),
                ("retry_budget_ratio", Float),
                ("retry_budget_min_per_sec", Int),
                ("retry_budget_window", Duration),
            ],
        ),
        table(
            "[pools.push.upstream_tls]",
            &[("ca", Text), ("server_name", Text)],
        ),
    ];
    let backend = table(
        "[[pools.push.backends]]",
        &[("name", Text), ("addr", Addr), ("weight", Int)],
    );
    let route = table(
        "[[routes]]",
        &[("host", Text), ("path_prefix", Text), ("pool", Text)],
    );
    let stray = (header(), key(), value()).prop_map(|(h, k, v)| format!("{h}\n{k} = {v}\n"));
    (
        tables
            .into_iter()
            .map(|t| prop::option::weighted(0.5, t))
            .collect::<Vec<_>>(),
        prop::collection::vec(backend, 0..3),
        prop::collection::vec(route, 0..3),
        prop::option::weighted(0.1, stray),
    )
        .prop_map(|(tables, backends, routes, stray)| {
            let mut text: String = tables.into_iter().flatten().collect();
            text.extend(backends);
            text.extend(routes);
            text.extend(stray);
            text
        })
}

fn header() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "",
        "[server]",
        "[admin]",
        "[pools.push.probe]",
        "[[pools.push.backends]]",
        "[[routes]]",
        "[pools]",
    ])
}

/// The 1-based line and character column of a byte offset, counted the plain way.
fn naive_position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_every_error_has_a_position(
        bytes in prop::collection::vec(any::<u8>(), 0..400)
    ) {
        match Config::parse_bytes(&bytes, None) {
            Ok(config) => assert_within_limits(&config),
            Err(LoadError::Invalid(errors)) => {
                let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
                assert_well_formed(&errors, lines);
            }
            Err(e) => panic!("no I/O without a file: {e}"),
        }
    }

    #[test]
    fn arbitrary_toml_documents_validate_within_limits_or_fail_with_positions(text in document()) {
        check(&text);
        // The same with a valid pool appended: more of it reaches the cross checks.
        check(&format!(
            "{text}\n[[pools.push.backends]]\nname = \"w9\"\naddr = \"10.9.9.9:9\"\n"
        ));
    }

    #[test]
    fn positions_agree_with_a_plain_count(
        text in "(ä|\u{202e}|\n|[a-z =\"]){0,80}",
        offsets in prop::collection::vec(0usize..120, 1..12),
    ) {
        let mut v = Validator::new(&text, None, &crate::config::SystemLookup);
        for &o in &offsets {
            let span: Option<Range<usize>> = Some(o..o);
            v.error(span, format!("at {o}"));
        }
        let errors = v.finish();
        let mut expected: Vec<(usize, usize, String)> = offsets
            .iter()
            .map(|&o| {
                let (line, col) = naive_position(&text, o);
                (line, col, format!("at {o}"))
            })
            .collect();
        // Sorted by offset, stably: equal offsets keep the order found.
        let mut order: Vec<usize> = (0..offsets.len()).collect();
        order.sort_by_key(|&i| offsets[i]);
        expected = order.into_iter().map(|i| expected[i].clone()).collect();
        let found: Vec<(usize, usize, String)> =
            errors.into_iter().map(|e| (e.line, e.col, e.message)).collect();
        prop_assert_eq!(found, expected);
    }

    #[test]
    fn sizes_parse_exactly_or_fail_without_panic(
        n in any::<u32>(),
        unit in prop::sample::select(vec![
            ("B", 1u64), ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000),
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("kib", 1 << 10),
        ]),
        junk in "[ -~]{0,16}",
    ) {
        let (name, multiplier) = unit;
        prop_assert_eq!(
            parse_size(&format!("{n}{name}")),
            Ok(u64::from(n) * multiplier)
        );
        prop_assert_eq!(parse_size(&format!("{n} {name}")), Ok(u64::from(n) * multiplier));
        // Anything else: a value or an error, never a panic.
        let _ = parse_size(&junk);
    }

    #[test]
    fn durations_are_accepted_only_within_their_range(
        text in prop_oneof![
            "[0-9]{1,25}(ns|us|ms|s|m|h|d|y)",
            "[ -~]{0,16}",
        ]
    ) {
        let doc = format!(
            "[server]\nrequest_timeout = {text:?}\n\
             [[pools.p.backends]]\nname = \"w\"\naddr = \"10.0.0.1:1\"\n"
        );
        match Config::parse(&doc, None) {
            Ok(config) => {
                let d = config.server.request_timeout;
                prop_assert!(d >= Duration::from_millis(1) && d <= limits::MAX_DURATION);
                prop_assert_eq!(Ok(d), humantime::parse_duration(&text));
            }
            Err(e) => assert_well_formed(&e.errors(), 5),
        }
    }
}
