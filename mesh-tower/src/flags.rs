//! Envoy's response flags, the short codes that say why a request ended as it did.
//!
//! A layer that answers a request itself (an injected fault, a denial, an overflow) or that
//! sees it fail marks the response with the flags that explain it, by inserting
//! [`ResponseFlags`] into the response's extensions. Telemetry and the access log read them
//! back; the codes and their spelling are Envoy's, so dashboards built for Envoy work.

use std::fmt;

/// A set of Envoy response flags, as a bit set (cheap to copy, no allocation).
///
/// ```
/// use mesh_tower::flags::{ResponseFlag, ResponseFlags};
/// let mut flags = ResponseFlags::default();
/// flags.insert(ResponseFlag::UpstreamOverflow);
/// flags.insert(ResponseFlag::UpstreamRetryLimitExceeded);
/// assert_eq!(flags.to_string(), "UO,URX");
/// assert_eq!(ResponseFlags::default().to_string(), "-");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResponseFlags(u32);

/// One Envoy response flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ResponseFlag {
    /// `UH`: no healthy upstream host in the cluster.
    NoHealthyUpstream = 0,
    /// `UF`: the upstream connection failed.
    UpstreamConnectionFailure,
    /// `UO`: upstream overflow (circuit breaking).
    UpstreamOverflow,
    /// `NR`: no route configured for the request.
    NoRouteFound,
    /// `URX`: the retry limit (or the retry budget) was reached.
    UpstreamRetryLimitExceeded,
    /// `UT`: upstream request timeout.
    UpstreamRequestTimeout,
    /// `UC`: the upstream connection was terminated.
    UpstreamConnectionTermination,
    /// `UR`: the upstream reset the request.
    UpstreamRemoteReset,
    /// `DI`: the request was delayed by fault injection.
    DelayInjected,
    /// `FI`: the request was aborted by fault injection.
    FaultInjected,
    /// `RL`: the request was rate limited locally.
    RateLimited,
    /// `UAEX`: the request was denied by an external authorization service.
    UnauthorizedExternalService,
    /// `RLSE`: the rate limit service failed.
    RateLimitServiceError,
    /// `DC`: the downstream connection was terminated.
    DownstreamConnectionTermination,
    /// `SI`: a stream idle timeout fired.
    StreamIdleTimeout,
    /// `DPE`: the downstream request had a protocol error.
    DownstreamProtocolError,
    /// `UMSDR`: the upstream request reached its maximum stream duration.
    UpstreamMaxStreamDurationReached,
    /// `OM`: the overload manager terminated the request.
    OverloadManager,
    /// `DF`: DNS resolution of the upstream failed.
    DnsResolutionFailed,
    /// `NC`: the route's upstream cluster was not found.
    NoClusterFound,
}

impl ResponseFlag {
    const ALL: [ResponseFlag; 20] = [
        Self::NoHealthyUpstream,
        Self::UpstreamConnectionFailure,
        Self::UpstreamOverflow,
        Self::NoRouteFound,
        Self::UpstreamRetryLimitExceeded,
        Self::UpstreamRequestTimeout,
        Self::UpstreamConnectionTermination,
        Self::UpstreamRemoteReset,
        Self::DelayInjected,
        Self::FaultInjected,
        Self::RateLimited,
        Self::UnauthorizedExternalService,
        Self::RateLimitServiceError,
        Self::DownstreamConnectionTermination,
        Self::StreamIdleTimeout,
        Self::DownstreamProtocolError,
        Self::UpstreamMaxStreamDurationReached,
        Self::OverloadManager,
        Self::DnsResolutionFailed,
        Self::NoClusterFound,
    ];

    /// Envoy's short code for this flag, as it appears in access logs and metrics labels.
    pub const fn code(self) -> &'static str {
        match self {
            Self::NoHealthyUpstream => "UH",
            Self::UpstreamConnectionFailure => "UF",
            Self::UpstreamOverflow => "UO",
            Self::NoRouteFound => "NR",
            Self::UpstreamRetryLimitExceeded => "URX",
            Self::UpstreamRequestTimeout => "UT",
            Self::UpstreamConnectionTermination => "UC",
            Self::UpstreamRemoteReset => "UR",
            Self::DelayInjected => "DI",
            Self::FaultInjected => "FI",
            Self::RateLimited => "RL",
            Self::UnauthorizedExternalService => "UAEX",
            Self::RateLimitServiceError => "RLSE",
            Self::DownstreamConnectionTermination => "DC",
            Self::StreamIdleTimeout => "SI",
            Self::DownstreamProtocolError => "DPE",
            Self::UpstreamMaxStreamDurationReached => "UMSDR",
            Self::OverloadManager => "OM",
            Self::DnsResolutionFailed => "DF",
            Self::NoClusterFound => "NC",
        }
    }
}

impl ResponseFlags {
    /// A set holding just `flag`.
    pub const fn of(flag: ResponseFlag) -> Self {
        Self(1 << flag as u8)
    }

    /// Adds `flag` to the set.
    pub fn insert(&mut self, flag: ResponseFlag) {
        self.0 |= 1 << flag as u8;
    }

    /// Whether `flag` is in the set.
    pub const fn contains(self, flag: ResponseFlag) -> bool {
        self.0 & (1 << flag as u8) != 0
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of two sets.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The flags in the set, in Envoy's order.
    pub fn iter(self) -> impl Iterator<Item = ResponseFlag> {
        ResponseFlag::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }

    /// Adds `flag` to the flags of `response`, creating the set if it has none.
    pub fn mark<B>(response: &mut http::Response<B>, flag: ResponseFlag) {
        response
            .extensions_mut()
            .get_or_insert_with(ResponseFlags::default)
            .insert(flag);
    }

    /// The flags recorded on `response`, empty when none were.
    pub fn of_response<B>(response: &http::Response<B>) -> Self {
        response
            .extensions()
            .get::<ResponseFlags>()
            .copied()
            .unwrap_or_default()
    }
}

impl fmt::Display for ResponseFlags {
    /// Envoy's spelling: codes joined by commas, `-` when there are none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for flag in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(flag.code())?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_and_reads_back_from_a_response() {
        let mut rsp = http::Response::new(());
        assert!(ResponseFlags::of_response(&rsp).is_empty());
        ResponseFlags::mark(&mut rsp, ResponseFlag::FaultInjected);
        ResponseFlags::mark(&mut rsp, ResponseFlag::DelayInjected);
        let flags = ResponseFlags::of_response(&rsp);
        assert!(flags.contains(ResponseFlag::FaultInjected));
        assert!(!flags.contains(ResponseFlag::RateLimited));
        assert_eq!(flags.to_string(), "DI,FI");
    }

    #[test]
    fn every_flag_has_a_distinct_code() {
        let mut codes: Vec<_> = ResponseFlag::ALL.iter().map(|f| f.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ResponseFlag::ALL.len());
    }
}
