//! The text-format building blocks the collector writes its families with: one counter,
//! gauge or histogram family from a series, and escaped label values.

use std::fmt::Write as _;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder,
    NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

use crate::metrics::Histogram;

/// A label value escaped for the text format (`\` `"` and newlines).
pub(super) struct Esc<'a>(pub(super) &'a str);

impl EncodeLabelValue for Esc<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Writes one counter family.
pub(super) fn counters<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, u64, u64>(&value, None)?;
    }
    Ok(())
}

/// Writes one gauge family.
pub(super) fn gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, V)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

/// A histogram as prometheus-client encodes it: `(sum, count, per-bucket counts)`, with
/// `f64::MAX` for +Inf. The +Inf bucket is the count, so count and buckets always agree.
pub(super) fn encodable(histogram: &Histogram) -> (f64, u64, Vec<(f64, u64)>) {
    let (sum, _, cumulative) = histogram.snapshot();
    let mut previous = 0;
    let buckets = cumulative
        .iter()
        .map(|&(bound, total)| {
            let n = total.saturating_sub(previous);
            previous = total;
            (if bound.is_finite() { bound } else { f64::MAX }, n)
        })
        .collect();
    (sum, previous, buckets)
}

/// Writes one histogram family, in seconds.
pub(super) fn histograms<'h, L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, &'h Histogram)>,
) -> Result<(), std::fmt::Error> {
    let unit = Unit::Seconds;
    let mut family = encoder.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
    for (labels, histogram) in series {
        let (sum, count, buckets) = encodable(histogram);
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// Writes one histogram without labels, in seconds.
pub(super) fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histogram: &Histogram,
) -> Result<(), std::fmt::Error> {
    let unit = Unit::Seconds;
    let mut family = encoder.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
    let (sum, count, buckets) = encodable(histogram);
    family.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// Seconds since the Unix epoch.
pub(super) fn unix_seconds(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes one gauge without labels.
pub(super) fn gauge<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    family.encode_gauge(&value)
}
