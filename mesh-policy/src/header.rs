//! Request headers as Envoy's matchers read them (route matching and RBAC alike).

use http::HeaderMap;
use http::header::AsHeaderName;
use std::borrow::Cow;

/// Header `name`'s value as Envoy matches it (`HeaderUtility::getAllOfHeaderAsString`): a
/// header sent more than once is one value, its values joined with `,`; `None` when absent.
/// A single value is borrowed, not copied; bytes that are not UTF-8 are replaced.
///
/// ```
/// use http::HeaderMap;
/// let mut headers = HeaderMap::new();
/// headers.append("x-role", "guest".parse().unwrap());
/// assert_eq!(mesh_policy::header::joined_value(&headers, "x-role").as_deref(), Some("guest"));
/// headers.append("x-role", "admin".parse().unwrap());
/// assert_eq!(mesh_policy::header::joined_value(&headers, "x-role").as_deref(), Some("guest,admin"));
/// assert_eq!(mesh_policy::header::joined_value(&headers, "x-other"), None);
/// ```
pub fn joined_value<'h>(headers: &'h HeaderMap, name: impl AsHeaderName) -> Option<Cow<'h, str>> {
    let mut values = headers.get_all(name).into_iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(String::from_utf8_lossy(first.as_bytes()));
    };
    let mut joined = first.as_bytes().to_vec();
    for value in std::iter::once(second).chain(values) {
        joined.push(b',');
        joined.extend_from_slice(value.as_bytes());
    }
    Some(Cow::Owned(match String::from_utf8(joined) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}
