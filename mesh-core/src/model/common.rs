use std::collections::BTreeMap;
use std::fmt;

/// A set of labels (`app: reviews`, `version: v1`), ordered so that snapshots compare exactly.
pub type Labels = BTreeMap<String, String>;

/// Whether every label of `selector` is present in `labels` with the same value.
///
/// An empty selector selects everything, as Istio's `workloadSelector` and subset labels do.
///
/// ```
/// use mesh_core::model::{selects, Labels};
/// let pod: Labels = [("app".into(), "reviews".into()), ("version".into(), "v1".into())].into();
/// let v1: Labels = [("version".into(), "v1".into())].into();
/// assert!(selects(&v1, &pod));
/// assert!(selects(&Labels::new(), &pod));
/// ```
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A fraction as parts per million, so that 0.1% is exact and snapshots compare with `==`.
///
/// ```
/// use mesh_core::model::Percentage;
/// assert_eq!(Percentage::from_percent_f64(0.1).unwrap().ppm(), 1_000);
/// assert_eq!(Percentage::ALL.ppm(), 1_000_000);
/// assert!(Percentage::from_percent_f64(100.5).is_none());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Percentage(u32);

impl Percentage {
    /// 100%.
    pub const ALL: Percentage = Percentage(1_000_000);
    /// 0%.
    pub const NONE: Percentage = Percentage(0);

    /// A percentage from parts per million; `None` above one million.
    pub const fn from_ppm(ppm: u32) -> Option<Self> {
        if ppm <= 1_000_000 {
            Some(Self(ppm))
        } else {
            None
        }
    }

    /// A percentage from a value in `0.0..=100.0` (Istio's `percentage.value`), rounded to the
    /// nearest part per million; `None` when out of range or not a number.
    pub fn from_percent_f64(percent: f64) -> Option<Self> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        // In range and finite: the product is within 0..=1e6, so the cast is exact enough.
        Some(Self((percent * 10_000.0).round() as u32))
    }

    /// Parts per million.
    pub const fn ppm(self) -> u32 {
        self.0
    }

    /// Whether a uniform draw in `0..1_000_000` falls inside this percentage.
    pub const fn admits(self, draw: u32) -> bool {
        draw < self.0
    }
}

impl fmt::Display for Percentage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", f64::from(self.0) / 10_000.0)
    }
}

/// A compiled regular expression in config, matched against the whole input (Envoy's
/// `safe_regex` and Istio's RE2 semantics), comparable by its source text.
#[derive(Clone, Debug)]
pub struct Pattern {
    source: String,
    regex: regex::Regex,
}

impl Pattern {
    /// Compiles `source`; the match must cover the whole input.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        Self::compile(source, &format!("^(?:{source})$"))
    }

    /// Compiles `source` to match anywhere in the input, as regex rewrites do (Envoy's
    /// `regex_rewrite` replaces every match).
    pub fn unanchored(source: &str) -> Result<Self, regex::Error> {
        Self::compile(source, source)
    }

    fn compile(source: &str, pattern: &str) -> Result<Self, regex::Error> {
        let regex = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()?;
        Ok(Self {
            source: source.to_owned(),
            regex,
        })
    }

    /// Whether `input` matches (the whole of it, unless built [`unanchored`](Self::unanchored)).
    pub fn is_match(&self, input: &str) -> bool {
        self.regex.is_match(input)
    }

    /// The pattern as written in config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The compiled regex, for rewrites that use capture groups.
    pub fn regex(&self) -> &regex::Regex {
        &self.regex
    }
}

impl serde::Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

/// How a string in a request is matched (Istio's `StringMatch`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum StringMatch {
    /// The whole value equals this.
    Exact(String),
    /// The value starts with this.
    Prefix(String),
    /// The whole value matches this regex.
    Regex(Pattern),
}

impl StringMatch {
    /// Whether `value` matches; `ignore_case` compares exact and prefix forms ASCII
    /// case-insensitively (Istio's `ignoreUriCase`).
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            Self::Exact(s) if ignore_case => s.eq_ignore_ascii_case(value),
            Self::Exact(s) => s == value,
            Self::Prefix(p) if ignore_case => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Regex(r) => r.is_match(value),
        }
    }
}
