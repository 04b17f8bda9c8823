//! `[pools.NAME.guard]`: the response guard, passive outlier detection and the retry budget
//! (the credential memories' keys are in `memory.rs`).

use std::time::Duration;

use http::StatusCode;

use toml::Spanned;

use super::{span_of, Validator, Zero};
use crate::config::{limits, raw, GuardConfig};

impl Validator<'_> {
    /// `[pools.NAME.guard]`, defaults where absent.
    pub(super) fn guard(&mut self, pool: &str, node: Option<&Spanned<raw::Guard>>) -> GuardConfig {
        let absent = raw::Guard::default();
        let g = node.map_or(&absent, Spanned::get_ref);
        let name = |key: &str| format!("pools.{pool}.guard.{key}");
        let statuses = match &g.statuses {
            Some(list) => list
                .get_ref()
                .iter()
                .filter_map(|code| {
                    let status = u16::try_from(*code.get_ref())
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .and_then(|c| StatusCode::from_u16(c).ok());
                    if status.is_none() {
                        self.error(
                            span_of(code),
                            format!(
                                "{} entry {} is not an HTTP status (100 to 599)",
                                name("statuses"),
                                code.get_ref()
                            ),
                        );
                    }
                    status
                })
                .collect(),
            None => vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN],
        };
        let ten_secs = Duration::from_secs(10);
        GuardConfig {
            statuses,
            max_replay_body: self.size(
                &name("max_replay_body"),
                g.max_replay_body.as_ref(),
                1 << 20,
                limits::MAX_REPLAY_BODY,
            ),
            eject_after: self.int_in(
                &name("eject_after"),
                g.eject_after.as_ref(),
                3,
                limits::EJECT_AFTER,
            ),
            eject_window: self
                .duration(
                    &name("eject_window"),
                    g.eject_window.as_ref(),
                    ten_secs,
                    Zero::Rejected,
                )
                .unwrap_or(ten_secs),
            consecutive_connect_failures: self.int_in(
                &name("consecutive_connect_failures"),
                g.consecutive_connect_failures.as_ref(),
                5,
                limits::CONSECUTIVE,
            ),
            consecutive_5xx: self.int_in(
                &name("consecutive_5xx"),
                g.consecutive_5xx.as_ref(),
                0,
                limits::CONSECUTIVE,
            ),
            max_ejection_percent: self.int_in(
                &name("max_ejection_percent"),
                g.max_ejection_percent.as_ref(),
                50,
                limits::MAX_EJECTION_PERCENT,
            ),
            retry_budget_ratio: self.float(
                &name("retry_budget_ratio"),
                g.retry_budget_ratio.as_ref(),
                0.2,
                0.0..=10.0,
            ),
            retry_budget_min_per_sec: self.int_in(
                &name("retry_budget_min_per_sec"),
                g.retry_budget_min_per_sec.as_ref(),
                10,
                limits::RETRY_BUDGET_MIN_PER_SEC,
            ),
            retry_budget_window: self
                .duration_in(
                    &name("retry_budget_window"),
                    g.retry_budget_window.as_ref(),
                    ten_secs,
                    limits::RETRY_BUDGET_WINDOW,
                )
                .unwrap_or(ten_secs),
            memory: self.guard_memory(pool, g),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::*;

    #[test]
    fn guard_statuses_range() {
        let errors = errors(&format!(
            "[pools.push.guard]\nstatuses = [99, 401, 600]\n{POOL}"
        ));
        let found: Vec<_> = errors
            .iter()
            .map(|e| (e.line, e.col, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    2,
                    13,
                    "pools.push.guard.statuses entry 99 is not an HTTP status (100 to 599)"
                ),
                (
                    2,
                    22,
                    "pools.push.guard.statuses entry 600 is not an HTTP status (100 to 599)"
                ),
            ]
        );
    }

    #[test]
    fn guard_limits() {
        assert_pool_error(
            "[pools.push.guard]\neject_after = 0\n",
            2,
            15,
            "pools.push.guard.eject_after must be between 1 and 1000 (got 0)",
        );
        assert_pool_error(
            "[pools.push.guard]\nmax_ejection_percent = 101\n",
            2,
            24,
            "pools.push.guard.max_ejection_percent must be at most 100 (got 101)",
        );
        assert_pool_error(
            "[pools.push.guard]\nretry_budget_ratio = 10.5\n",
            2,
            22,
            "pools.push.guard.retry_budget_ratio must be between 0 and 10 (got 10.5)",
        );
        assert_pool_error(
            "[pools.push.guard]\nretry_budget_ratio = -0.1\n",
            2,
            22,
            "between 0 and 10",
        );
        assert_pool_error(
            "[pools.push.guard]\neject_window = \"0s\"\n",
            2,
            16,
            "pools.push.guard.eject_window must be greater than 0",
        );
        assert_pool_error(
            "[pools.push.guard]\nretry_budget_window = \"0s\"\n",
            2,
            23,
            "pools.push.guard.retry_budget_window must be greater than 0",
        );
        assert_pool_error(
            "[pools.push.guard]\nconsecutive_5xx = -1\n",
            2,
            19,
            "pools.push.guard.consecutive_5xx must be between 0 and 1000000 (got -1)",
        );
        assert_pool_error(
            "[pools.push.guard]\nmax_replay_body = \"1.5\"\n",
            2,
            19,
            "the unit is missing",
        );
    }
}
