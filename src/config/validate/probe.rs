//! `[pools.NAME.probe]`: the readiness probe.

use std::time::Duration;

use toml::Spanned;

use super::{span_of, Validator};
use crate::config::{limits, raw, Contract, ProbeConfig};

impl Validator<'_> {
    /// `[pools.NAME.probe]`, defaults where absent.
    pub(super) fn probe(&mut self, pool: &str, node: Option<&Spanned<raw::Probe>>) -> ProbeConfig {
        let absent = raw::Probe::default();
        let p = node.map_or(&absent, Spanned::get_ref);
        let name = |key: &str| format!("pools.{pool}.probe.{key}");
        let path = match &p.path {
            Some(value) => {
                let path = value.get_ref();
                if !path.starts_with('/') {
                    self.error(
                        span_of(value),
                        format!("{} \"{path}\" must start with '/'", name("path")),
                    );
                } else if path.parse::<http::uri::PathAndQuery>().is_err() {
                    self.error(
                        span_of(value),
                        format!("{} \"{path}\" is not a valid URI path", name("path")),
                    );
                }
                path.clone()
            }
            None => "/ready".to_owned(),
        };
        let interval = self.duration_in(
            &name("interval"),
            p.interval.as_ref(),
            Duration::from_secs(1),
            limits::PROBE_INTERVAL,
        );
        // Unset, the timeout is DESIGN.md's 500 ms whatever the interval: a short interval
        // alone probes more often, never with less patience.
        let timeout = self.duration_in(
            &name("timeout"),
            p.timeout.as_ref(),
            Duration::from_millis(500),
            limits::PROBE_TIMEOUT,
        );
        // A timeout above the interval is allowed (Kubernetes, Envoy and HAProxy accept it):
        // the prober never overlaps probes of one backend (see `readiness::next_probe_at`).
        ProbeConfig {
            path,
            interval: interval.unwrap_or(Duration::from_secs(1)),
            timeout: timeout.unwrap_or(Duration::from_millis(500)),
            rise: self.int_in(&name("rise"), p.rise.as_ref(), 2, limits::RISE_FALL),
            fall: self.int_in(&name("fall"), p.fall.as_ref(), 2, limits::RISE_FALL),
            contract: self.choice(
                &name("contract"),
                p.contract.as_ref(),
                Contract::KeySync,
                &Contract::ALL,
            ),
            max_generation_lag: self.int_in(
                &name("max_generation_lag"),
                p.max_generation_lag.as_ref(),
                10,
                limits::MAX_GENERATION_LAG,
            ),
            min_key_ratio: self.float(
                &name("min_key_ratio"),
                p.min_key_ratio.as_ref(),
                0.98,
                0.0..=1.0,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::*;

    #[test]
    fn rise_and_fall_at_least_one() {
        assert_pool_error(
            "[pools.push.probe]\nrise = 0\n",
            2,
            8,
            "probe.rise must be between 1 and 1000 (got 0)",
        );
        assert_pool_error(
            "[pools.push.probe]\nfall = 0\n",
            2,
            8,
            "pools.push.probe.fall must be between 1 and 1000 (got 0)",
        );
    }

    #[test]
    fn min_key_ratio_range() {
        assert_pool_error(
            "[pools.push.probe]\nmin_key_ratio = 1.5\n",
            2,
            17,
            "pools.push.probe.min_key_ratio must be between 0 and 1 (got 1.5)",
        );
        assert_pool_error(
            "[pools.push.probe]\nmin_key_ratio = nan\n",
            2,
            17,
            "between 0 and 1",
        );
    }

    #[test]
    fn probe_path_must_start_with_slash() {
        assert_pool_error(
            "[pools.push.probe]\npath = \"ready\"\n",
            2,
            8,
            "pools.push.probe.path \"ready\" must start with '/'",
        );
        assert_pool_error(
            "[pools.push.probe]\npath = \"/re ady\"\n",
            2,
            8,
            "is not a valid URI path",
        );
    }

    #[test]
    fn probe_interval_and_timeout() {
        assert_pool_error(
            "[pools.push.probe]\ninterval = \"0s\"\n",
            2,
            12,
            "pools.push.probe.interval must be greater than 0",
        );
        assert_pool_error(
            "[pools.push.probe]\ntimeout = \"0s\"\n",
            2,
            11,
            "pools.push.probe.timeout must be greater than 0",
        );
        // Only a short interval: the unset timeout is still DESIGN.md's 500 ms.
        let probe =
            &ok(&format!("[pools.push.probe]\ninterval = \"100ms\"\n{POOL}")).pools[0].probe;
        assert_eq!(probe.interval, Duration::from_millis(100));
        assert_eq!(probe.timeout, Duration::from_millis(500));
    }

    #[test]
    fn a_probe_timeout_may_exceed_the_interval() {
        let probe = &ok(&format!(
            "[pools.push.probe]\ninterval = \"200ms\"\ntimeout = \"500ms\"\n{POOL}"
        ))
        .pools[0]
            .probe;
        assert_eq!(probe.interval, Duration::from_millis(200));
        assert_eq!(probe.timeout, Duration::from_millis(500));
        // Only a long timeout: above the default interval, and kept.
        let probe = &ok(&format!("[pools.push.probe]\ntimeout = \"2s\"\n{POOL}")).pools[0].probe;
        assert_eq!(probe.timeout, Duration::from_secs(2));
    }
}
