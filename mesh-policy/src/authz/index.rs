//! A prefilter over one list of compiled policies, so that a request evaluates only the
//! policies that can match it instead of every policy in the list.
//!
//! For each policy the index looks for an attribute that every rule of the policy constrains
//! to a few values: the path, the method, the source principal or the source namespace, each
//! value exact, a prefix (`/api/*`, or the literal segments before a template's first
//! operator) or a suffix (`*.json`). Such a set of values is a necessary condition for the
//! policy to match: a policy matches when any rule does, a rule needs all of `from`, `to` and
//! `when`, and `from` and `to` need any one of their sources or operations. So a policy is
//! keyed on an attribute only when every rule is, a rule is keyed through `from` / `to` only
//! when every source / operation names values for the attribute (or through one `when`
//! condition on it), and a value is a key only when it is exact, a prefix or a suffix
//! (`notValues` only narrow a match further and are ignored; a presence match `*` keys
//! nothing). Of the attributes a policy could be keyed on, it is keyed on the one whose values
//! are shared with the fewest other policies; a policy with no key is evaluated for every
//! request, and a policy without rules (which matches nothing) for none.
//!
//! Lookups compare as the matchers do: paths, methods, principals and namespaces are
//! case-sensitive (hosts, the only case-insensitive field, are not keyed). A prefix or suffix
//! table costs one hash lookup per distinct key length no longer than the request's value.
//!
//! The candidates come back in list order (a merge of sorted index lists), so the first
//! matching policy, and the rule reported for it, are those of the linear scan.
//!
//! TCP connections ([`Mode::Tcp`]) have no path or method. DENY rules ignore those fields, so
//! policies keyed on them are all candidates; ALLOW and AUDIT rules that name them match no
//! connection, so such policies are skipped.

// foldhash: keys come from config; a request only looks up (no flooding to fear).
use foldhash::HashMap;

use super::matcher::{Pair, PathMatch, Seg, StrMatch};
use super::{Attributes, Condition, Mode, Policy, Rule};

/// An attribute a policy can be keyed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Dim {
    Path,
    Method,
    Principal,
    Namespace,
}

/// Every [`Dim`], in the order ties are broken (an exact path is usually the most selective).
const DIMS: [Dim; 4] = [Dim::Path, Dim::Principal, Dim::Namespace, Dim::Method];

impl Dim {
    /// Whether only an HTTP request has the attribute (see [`Mode::Tcp`] in the module docs).
    fn is_http(self) -> bool {
        matches!(self, Self::Path | Self::Method)
    }

    /// The request's value, as the matchers see it.
    fn of<'a>(self, req: &Attributes<'a>) -> Option<&'a str> {
        match self {
            Self::Path => Some(req.path_only()),
            Self::Method => Some(req.method),
            Self::Principal => req.principal(),
            Self::Namespace => req.namespace(),
        }
    }

    /// The keys every match of `rule` needs on this attribute, or `None` when it has none.
    fn keys(self, rule: &Rule) -> Option<Vec<Key>> {
        let when = |pick: fn(&Condition) -> Option<&Pair<StrMatch>>| {
            rule.when
                .iter()
                .filter_map(pick)
                .find_map(|p| pair_keys(Some(p), str_key))
        };
        match self {
            Self::Path => any_of(&rule.to, |o| pair_keys(o.paths.as_ref(), path_key)),
            Self::Method => any_of(&rule.to, |o| pair_keys(o.methods.as_ref(), str_key)),
            Self::Principal => fewest(
                any_of(&rule.from, |s| pair_keys(s.principals.as_ref(), str_key)),
                when(|c| match c {
                    Condition::SourcePrincipal(p) => Some(p),
                    _ => None,
                }),
            ),
            Self::Namespace => fewest(
                any_of(&rule.from, |s| pair_keys(s.namespaces.as_ref(), str_key)),
                when(|c| match c {
                    Condition::SourceNamespace(p) => Some(p),
                    _ => None,
                }),
            ),
        }
    }
}

/// One value a keyed attribute must match.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

fn str_key(m: &StrMatch) -> Option<Key> {
    match m {
        StrMatch::Exact(v) => Some(Key::Exact(v.as_str().into())),
        StrMatch::Prefix(p) => Some(Key::Prefix(p.as_str().into())),
        StrMatch::Suffix(s) => Some(Key::Suffix(s.as_str().into())),
        StrMatch::Present => None,
    }
}

/// A template's literal segments before its first operator are a prefix of every path it
/// matches: `/a/b/{*}` needs `/a/b/`; `/a/{**}` needs `/a` (`{**}` also matches no segment).
fn path_key(m: &PathMatch) -> Option<Key> {
    let segs = match m {
        PathMatch::Str(s) => return str_key(s),
        PathMatch::Template(segs) => segs,
    };
    let mut prefix = String::new();
    for seg in segs {
        match seg {
            Seg::Lit(l) => {
                prefix.push('/');
                prefix.push_str(l);
            }
            Seg::One => {
                prefix.push('/');
                break;
            }
            Seg::Rest => break,
        }
    }
    // `/{*}...` and `/{**}` only need a leading '/': not worth a key.
    (prefix.len() > 1).then(|| Key::Prefix(prefix.into()))
}

/// The keys of a `values` list: all of them must be keys. An empty list matches anything.
fn pair_keys<M>(pair: Option<&Pair<M>>, key: impl Fn(&M) -> Option<Key>) -> Option<Vec<Key>> {
    let pair = pair.filter(|p| !p.values.is_empty())?;
    pair.values.iter().map(key).collect()
}

/// The keys of a list where any one element may match (`from`, `to`): every element must be
/// keyed. An empty list matches anything.
fn any_of<T>(items: &[T], keys: impl Fn(&T) -> Option<Vec<Key>>) -> Option<Vec<Key>> {
    if items.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    for item in items {
        all.extend(keys(item)?);
    }
    Some(all)
}

/// Of two necessary conditions, the one with fewer keys.
fn fewest(a: Option<Vec<Key>>, b: Option<Vec<Key>>) -> Option<Vec<Key>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.len() < a.len() { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// The keys of `policy` on `dim`: the union over its rules, each of which must be keyed.
fn policy_keys(policy: &Policy, dim: Dim) -> Option<Vec<Key>> {
    let mut keys = Vec::new();
    for rule in &policy.rules {
        for k in dim.keys(rule)? {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    Some(keys)
}

/// Prefixes or suffixes of one attribute, by length.
#[derive(Clone, Debug, Default)]
struct Affixes {
    /// The distinct key lengths in bytes, ascending.
    lens: Vec<usize>,
    map: HashMap<Box<str>, Vec<u32>>,
}

impl Affixes {
    fn insert(&mut self, affix: &str, policy: u32) {
        if let Err(at) = self.lens.binary_search(&affix.len()) {
            self.lens.insert(at, affix.len());
        }
        push_once(self.map.entry(affix.into()).or_default(), policy);
    }

    /// The lists of the affixes `value` has; `cut` takes the part of a given length (`None`
    /// when that is not on a character boundary, where no key can end either).
    fn lookup<'a, 'v>(
        &'a self,
        value: &'v str,
        cut: impl Fn(usize) -> Option<&'v str>,
        out: &mut Lists<'a>,
    ) {
        for &len in self.lens.iter().take_while(|&&len| len <= value.len()) {
            if let Some(part) = cut(len)
                && let Some(list) = self.map.get(part)
            {
                out.push(list);
            }
        }
    }
}

/// The policies keyed on one attribute, by key.
#[derive(Clone, Debug, Default)]
struct Table {
    exact: HashMap<Box<str>, Vec<u32>>,
    prefix: Affixes,
    suffix: Affixes,
}

impl Table {
    fn insert(&mut self, key: &Key, policy: u32) {
        match key {
            Key::Exact(v) => push_once(self.exact.entry(v.clone()).or_default(), policy),
            Key::Prefix(p) => self.prefix.insert(p, policy),
            Key::Suffix(s) => self.suffix.insert(s, policy),
        }
    }

    fn lookup<'a>(&'a self, value: &str, out: &mut Lists<'a>) {
        if let Some(list) = self.exact.get(value) {
            out.push(list);
        }
        self.prefix.lookup(value, |len| value.get(..len), out);
        self.suffix
            .lookup(value, |len| value.get(value.len() - len..), out);
    }
}

/// Appends `policy` unless it is already last (policies are inserted in list order).
fn push_once(list: &mut Vec<u32>, policy: u32) {
    if list.last() != Some(&policy) {
        list.push(policy);
    }
}

/// The prefilter over one list of policies; see the module docs.
#[derive(Clone, Debug, Default)]
pub(super) struct Index {
    /// Every policy, for a request that gathers too many lists.
    all: Vec<u32>,
    /// One table per [`Dim`], indexed by `Dim as usize`.
    tables: [Table; 4],
    /// The policies without a key, evaluated for every request.
    always: Vec<u32>,
    /// The policies keyed on an HTTP-only attribute, all candidates for a TCP DENY.
    http_keyed: Vec<u32>,
}

impl Index {
    /// Indexes `policies`; `None` when the index would not narrow anything.
    pub(super) fn new(policies: &[Policy]) -> Option<Self> {
        let ids = 0..u32::try_from(policies.len()).ok()?;
        let keyed: Vec<[Option<Vec<Key>>; 4]> = policies
            .iter()
            .map(|p| DIMS.map(|dim| policy_keys(p, dim)))
            .collect();
        // How many policies could be keyed on each value: a key shared by many is a weak one.
        let mut counts: HashMap<(Dim, &Key), usize> = HashMap::default();
        for keys in &keyed {
            for (dim, keys) in DIMS.iter().zip(keys) {
                for key in keys.iter().flatten() {
                    *counts.entry((*dim, key)).or_default() += 1;
                }
            }
        }
        let mut index = Self {
            all: ids.collect(),
            ..Self::default()
        };
        for ((id, policy), keys) in (0..).zip(policies).zip(&keyed) {
            if policy.rules.is_empty() {
                continue; // matches nothing
            }
            let best = DIMS
                .iter()
                .zip(keys)
                .filter_map(|(dim, keys)| Some((*dim, keys.as_ref()?)))
                .min_by_key(|(dim, keys)| {
                    keys.iter()
                        .map(|k| counts.get(&(*dim, k)).copied().unwrap_or(0))
                        .max()
                        .unwrap_or(0)
                });
            match best {
                None => index.always.push(id),
                Some((dim, keys)) => {
                    if dim.is_http() {
                        index.http_keyed.push(id);
                    }
                    for key in keys {
                        index.tables[dim as usize].insert(key, id);
                    }
                }
            }
        }
        (index.always.len() < policies.len()).then_some(index)
    }

    /// The policies that can match `req`, in list order.
    pub(super) fn candidates(
        &self,
        req: &Attributes<'_>,
        mode: Mode,
        deny: bool,
    ) -> Candidates<'_> {
        let mut lists = Lists::default();
        lists.push(&self.always);
        for dim in DIMS {
            if mode == Mode::Tcp && dim.is_http() {
                continue;
            }
            if let Some(value) = dim.of(req) {
                self.tables[dim as usize].lookup(value, &mut lists);
            }
        }
        if mode == Mode::Tcp && deny {
            lists.push(&self.http_keyed);
        }
        if lists.overflow {
            lists = Lists::default();
            lists.push(&self.all);
        }
        Candidates(lists)
    }
}

/// How many candidate lists one request may gather before the index gives up and scans.
const MAX_LISTS: usize = 16;

/// The sorted candidate lists of one request, without allocating.
#[derive(Debug, Default)]
struct Lists<'a> {
    lists: [&'a [u32]; MAX_LISTS],
    len: usize,
    overflow: bool,
}

impl<'a> Lists<'a> {
    fn push(&mut self, list: &'a [u32]) {
        if list.is_empty() {
            return;
        }
        match self.lists.get_mut(self.len) {
            Some(slot) => {
                *slot = list;
                self.len += 1;
            }
            None => self.overflow = true,
        }
    }
}

/// The candidate policies of one request, as indexes into the list, ascending: the union of
/// its sorted lists.
#[derive(Debug)]
pub(super) struct Candidates<'a>(Lists<'a>);

impl Iterator for Candidates<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let lists = &mut self.0.lists[..self.0.len];
        let min = lists.iter().filter_map(|l| l.first()).min().copied()?;
        for list in lists.iter_mut() {
            if let [first, rest @ ..] = *list
                && *first == min
            {
                *list = rest;
            }
        }
        usize::try_from(min).ok()
    }
}
