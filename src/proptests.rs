//! Property tests of the readiness JSON judge (issue 10, "Also build"): any answer a worker
//! may give (any status, any bytes, any report) is judged without a panic, and a pass means
//! exactly what the contract says. Case counts are proptest's default (256, `PROPTEST_CASES`
//! overrides).

use std::time::Duration;

use proptest::prelude::*;

use crate::backend::KeySync;
use crate::config::{Contract, ProbeConfig};
use crate::fleet::{Mark, Reference};
use crate::readiness::{check_fleet, judge};

fn cfg(contract: Contract, lag: u64, ratio: f64) -> ProbeConfig {
    ProbeConfig {
        path: "/ready".into(),
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 2,
        contract,
        max_generation_lag: lag,
        min_key_ratio: ratio,
    }
}

/// What the fleet checks compare a report with: the peers' newest generation and median
/// keys, and the pool's mark, each possibly absent (a cold start, a first report).
fn reference() -> impl Strategy<Value = Reference> {
    (
        prop::option::of(any::<u64>()),
        prop::option::of(any::<u64>()),
        prop::option::of((any::<u64>(), any::<u64>())),
    )
        .prop_map(|(newest, median, mark)| Reference {
            newest,
            median,
            mark: mark.map(|(generation, keys)| Mark { generation, keys }),
        })
}

/// A JSON value for a report field: a number of any kind, or something that is not one.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("null".to_owned()),
        Just("\"12\"".to_owned()),
        Just("1e400".to_owned()),
        Just("18446744073709551616".to_owned()),
    ]
}

proptest! {
    #[test]
    fn any_answer_is_judged_without_panic_and_a_pass_needs_a_2xx(
        status in 0u16..1000,
        body in prop::collection::vec(any::<u8>(), 0..200),
        peers in reference(),
        lag in 0u64..=u32::MAX as u64,
        ratio in 0.0f64..=1.0,
    ) {
        for contract in Contract::ALL {
            let (report, verdict) = judge(&cfg(contract, lag, ratio), status, &body, &peers);
            let is_2xx = (200..300).contains(&status);
            if verdict.is_ok() {
                prop_assert!(is_2xx);
            } else {
                prop_assert!(!verdict.unwrap_err().reason.is_empty(), "a failure has a reason");
            }
            if contract == Contract::Status {
                prop_assert_eq!(report, None);
                let again = judge(&cfg(contract, lag, ratio), status, &body, &peers);
                prop_assert_eq!(again.1.is_ok(), is_2xx);
            }
        }
    }

    #[test]
    fn a_key_sync_report_passes_exactly_when_complete_and_in_line_with_its_peers(
        status in prop_oneof![Just(200u16), Just(204), Just(503), 100u16..600],
        complete in any::<bool>(),
        generation in field(),
        keys in field(),
        extra in prop_oneof![Just(""), Just(", \"x\": [1, {}]")],
        peers in reference(),
        lag in 0u64..=u32::MAX as u64,
        ratio in 0.0f64..=1.0,
    ) {
        let body = format!(
            "{{\"key_sync\": {{\"complete\": {complete}, \"generation\": {generation}, \
             \"keys\": {keys}{extra}}}}}"
        );
        let cfg = cfg(Contract::KeySync, lag, ratio);
        let (report, verdict) = judge(&cfg, status, body.as_bytes(), &peers);
        let numbers = (generation.parse::<u64>(), keys.parse::<u64>());
        if let (Ok(g), Ok(k)) = numbers {
            // A well-formed report is always parsed, whatever the status, for the operator.
            let expected = KeySync { complete, generation: g, keys: k };
            prop_assert_eq!(report, Some(expected));
            let passes = (200..300).contains(&status)
                && complete
                && check_fleet(&expected, &peers, lag, ratio).is_ok();
            prop_assert_eq!(verdict.is_ok(), passes, "{:?}", verdict);
        } else {
            prop_assert!(verdict.is_err(), "{body}");
        }
    }
}
