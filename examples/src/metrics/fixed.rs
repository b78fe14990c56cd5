//! Histograms whose buckets are known up front (Istio's), counted in place as samples come.
//!
//! The Prometheus exporter keeps every sample of a histogram (pushed, with a timestamp, onto
//! an epoch-guarded lock-free list) until a scrape or its upkeep folds the samples into their
//! buckets. For Istio's three histograms, recorded on every request, that cost the sidecar
//! about 530 instructions and 12 atomic read-modify-writes a request. Here a sample adds one
//! to its bucket and its value to the sum: two atomic operations, about 40 instructions, and a
//! scrape reads the counts as they stand (HTTP/1.1 through the sidecar: 32,496 -> 32,064
//! instructions a request; `benches/RESULTS.md`, session 17).

use metrics::{Histogram, HistogramFn, Key, KeyName, SharedString};
use metrics_exporter_prometheus::LabelSet;
use metrics_exporter_prometheus::formatting::{
    write_help_line, write_metric_line, write_type_line,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// One label set's histogram: a count per bucket and the sum of the samples.
#[derive(Debug)]
pub(crate) struct Buckets {
    /// Upper bounds, ascending; a sample equal to a bound falls in that bound's bucket.
    bounds: &'static [f64],
    /// One count per bound, then the samples above every bound (`+Inf`). Not cumulative.
    counts: Box<[AtomicU64]>,
    /// The sum of the samples, as `f64` bits.
    sum: AtomicU64,
}

impl Buckets {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// The cumulative count of each bound's bucket (`le`), the total count and the sum.
    fn read(&self) -> (Vec<u64>, u64, f64) {
        let mut cumulative = Vec::with_capacity(self.bounds.len());
        let mut total = 0u64;
        for count in &self.counts[..self.bounds.len()] {
            total += count.load(Ordering::Relaxed);
            cumulative.push(total);
        }
        total += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        (cumulative, total, sum)
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        // The first bound not below the value (past the end: `+Inf`). A scan from the
        // smallest, as client_golang does for short bucket lists: most samples (durations of
        // a few milliseconds, small bodies) are found within the first few bounds.
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        // Uncontended, one compare-exchange: a worker thread rarely meets another here.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }
}

/// The histograms of the metric names given fixed buckets, by key (name and labels).
#[derive(Debug)]
pub(crate) struct FixedHistograms {
    /// Each name with fixed buckets, and its bounds.
    names: Vec<(&'static str, &'static [f64])>,
    registered: Mutex<HashMap<Key, Arc<Buckets>>>,
    descriptions: Mutex<HashMap<String, SharedString>>,
}

impl FixedHistograms {
    /// Histograms for `names`, each with its bucket bounds (ascending).
    pub(crate) fn new(names: Vec<(&'static str, &'static [f64])>) -> Self {
        Self {
            names,
            registered: Mutex::default(),
            descriptions: Mutex::default(),
        }
    }

    fn bounds_of(&self, name: &str) -> Option<&'static [f64]> {
        self.names
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, bounds)| *bounds)
    }

    /// The histogram of `key`, made on first use; `None` when its name has no fixed buckets.
    pub(crate) fn register(&self, key: &Key) -> Option<Histogram> {
        let bounds = self.bounds_of(key.name())?;
        let buckets = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Buckets::new(bounds)))
            .clone();
        Some(Histogram::from_arc(buckets))
    }

    /// Whether `name` has fixed buckets here (else it belongs to another recorder).
    pub(crate) fn holds(&self, name: &KeyName) -> bool {
        self.bounds_of(name.as_str()).is_some()
    }

    /// Keeps the description of `name` for its `# HELP` line.
    pub(crate) fn describe(&self, name: &KeyName, description: SharedString) {
        self.descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.as_str().to_owned(), description);
    }

    /// Appends every histogram to `text` in the Prometheus text format, as the exporter writes
    /// its own: a family per name (its `# HELP` and `# TYPE` lines, then each label set's
    /// buckets, sum and count), names and label sets in order.
    pub(crate) fn render(&self, text: &mut String) {
        let mut registered: Vec<(Key, Arc<Buckets>)> = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, buckets)| (key.clone(), buckets.clone()))
            .collect();
        // By name, then labels.
        registered.sort_by(|a, b| a.0.cmp(&b.0));
        let descriptions = self
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut family: Option<&str> = None;
        for (key, buckets) in &registered {
            let name = key.name();
            if family != Some(name) {
                if family.is_some() {
                    text.push('\n');
                }
                if let Some(description) = descriptions.get(name) {
                    write_help_line(text, name, None, None, description);
                }
                write_type_line(text, name, None, None, "histogram");
                family = Some(name);
            }
            let labels = LabelSet::from_key_and_global(key, &Default::default());
            let (cumulative, count, sum) = buckets.read();
            for (bound, at_most) in buckets.bounds.iter().zip(cumulative) {
                write_metric_line(
                    text,
                    name,
                    Some("bucket"),
                    &labels,
                    Some(("le", bound)),
                    at_most,
                    None,
                );
            }
            write_metric_line(
                text,
                name,
                Some("bucket"),
                &labels,
                Some(("le", "+Inf")),
                count,
                None,
            );
            write_metric_line::<&str, f64>(text, name, Some("sum"), &labels, None, sum, None);
            write_metric_line::<&str, u64>(text, name, Some("count"), &labels, None, count, None);
        }
        if family.is_some() {
            text.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FixedHistograms;
    use metrics::{Key, KeyName, Label};

    const BOUNDS: [f64; 3] = [0.5, 1.0, 5.0];

    fn histograms() -> FixedHistograms {
        FixedHistograms::new(vec![("latency", &BOUNDS), ("size", &[10.0])])
    }

    fn key(name: &'static str, code: &'static str) -> Key {
        Key::from_parts(name, vec![Label::new("code", code)])
    }

    /// The lines of `text` that start with `prefix`.
    fn lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(prefix)).collect()
    }

    #[test]
    fn a_sample_counts_in_the_first_bucket_that_holds_it_and_the_counts_render_cumulative() {
        let h = histograms();
        let latency = h.register(&key("latency", "200")).unwrap();
        for value in [0.5, 0.7, 1.0, 3.0, 9.0] {
            latency.record(value);
        }
        let mut text = String::new();
        h.render(&mut text);
        assert_eq!(
            lines(&text, "latency_"),
            [
                r#"latency_bucket{code="200",le="0.5"} 1"#,
                r#"latency_bucket{code="200",le="1"} 3"#,
                r#"latency_bucket{code="200",le="5"} 4"#,
                r#"latency_bucket{code="200",le="+Inf"} 5"#,
                r#"latency_sum{code="200"} 14.2"#,
                r#"latency_count{code="200"} 5"#,
            ]
        );
    }

    #[test]
    fn one_key_registered_twice_is_one_histogram_and_each_label_set_its_own() {
        let h = histograms();
        h.register(&key("latency", "200")).unwrap().record(0.1);
        h.register(&key("latency", "200")).unwrap().record(0.2);
        h.register(&key("latency", "503")).unwrap().record(7.0);
        let mut text = String::new();
        h.render(&mut text);
        assert_eq!(
            lines(&text, "latency_count"),
            [
                r#"latency_count{code="200"} 2"#,
                r#"latency_count{code="503"} 1"#,
            ]
        );
    }

    #[test]
    fn a_name_without_fixed_buckets_is_left_to_the_other_recorder() {
        let h = histograms();
        assert!(h.register(&key("other", "200")).is_none());
        assert!(!h.holds(&KeyName::from("other")));
        let mut text = String::new();
        h.render(&mut text);
        assert_eq!(text, "");
    }

    #[test]
    fn each_name_renders_as_one_family_with_its_description_and_type() {
        let h = histograms();
        assert!(h.holds(&KeyName::from("size")));
        h.describe(&KeyName::from("size"), "Body sizes.".into());
        h.register(&key("size", "200")).unwrap().record(3.0);
        h.register(&key("latency", "200")).unwrap().record(3.0);
        h.register(&key("size", "503")).unwrap().record(30.0);
        let mut text = String::new();
        h.render(&mut text);
        let families: Vec<&str> = lines(&text, "# ");
        assert_eq!(
            families,
            [
                "# TYPE latency histogram",
                "# HELP size Body sizes.",
                "# TYPE size histogram",
            ]
        );
        // The families do not interleave: every `size` line comes after every `latency` one.
        let first_size = text.find("size_bucket").unwrap();
        assert!(text.rfind("latency_").unwrap() < first_size);
        assert!(text.contains(r#"size_bucket{code="503",le="+Inf"} 1"#));
        assert!(text.contains(r#"size_bucket{code="503",le="10"} 0"#));
    }

    #[test]
    fn samples_from_many_threads_are_all_counted() {
        let h = histograms();
        let latency = h.register(&key("latency", "200")).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        latency.record(0.25);
                    }
                });
            }
        });
        let mut text = String::new();
        h.render(&mut text);
        assert!(
            text.contains(r#"latency_count{code="200"} 40000"#),
            "{text}"
        );
        assert!(text.contains(r#"latency_sum{code="200"} 10000"#), "{text}");
    }
}
