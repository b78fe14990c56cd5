#![allow(deprecated)]

use super::*;
use crate::test_util::{fixtures, pack};
use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, OutlierDetection as PbOutlier, circuit_breakers::Thresholds,
    cluster::TransportSocketMatch,
};
use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, Locality as PbLocality, Metadata, RuntimeFractionalPercent,
    TransportSocket, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    self as rpb, HeaderMatcher, QueryParameterMatcher, RetryPolicy as PbRetry,
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route_action::RequestMirrorPolicy, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::common::fault::v3::{
    FaultDelay as PbDelay, fault_delay::FaultDelaySecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::cors::v3 as cors_v3;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3::{
    FaultAbort as PbAbort, HttpFault, fault_abort::ErrorType,
};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
    http_connection_manager::{PathWithEscapedSlashesAction as Action, RouteSpecifier},
    http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, SdsSecretConfig, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher, string_matcher};
use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
use envoy_types::pb::google::protobuf::{
    BoolValue, Duration as PbDuration, Struct, UInt32Value, Value, value::Kind,
};
use mesh_core::model::{
    AbortError, HealthStatus, LbAlgorithm, PathNormalization, Percentage, RetryCondition,
    RouteAction, StringMatch, TlsMode,
};

const C1: &str = "outbound|9080|v1|reviews.default.svc.cluster.local";
const C2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";

fn dur(secs: i64, millis: i32) -> PbDuration {
    PbDuration {
        seconds: secs,
        nanos: millis * 1_000_000,
    }
}

fn err(kind: ResourceType, any: Any) -> String {
    decode(kind, &any).unwrap_err().to_string()
}

fn route_of(rc: &rpb::RouteConfiguration) -> mesh_core::model::Route {
    match decode(ResourceType::RouteConfiguration, &pack(rc)).unwrap() {
        Decoded::RouteConfiguration(r) => r.virtual_hosts[0].routes[0].clone(),
        other => panic!("{other:?}"),
    }
}

fn hcm_with_filters(names: &[&str]) -> Listener {
    let mut l = fixtures::listener(9080, "9080");
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        unreachable!()
    };
    let mut hcm: HttpConnectionManager = unpack(any, "").unwrap();
    let router = hcm.http_filters.pop().unwrap();
    for n in names {
        hcm.http_filters.push(HttpFilter {
            name: (*n).to_owned(),
            ..Default::default()
        });
    }
    hcm.http_filters.push(router);
    l.filter_chains[0].filters[0].config_type = Some(filter::ConfigType::TypedConfig(pack(&hcm)));
    l
}

#[test]
fn listener_with_istio_filters_takes_routes_from_rds() {
    let l = hcm_with_filters(&[
        "istio.metadata_exchange",
        "envoy.filters.http.grpc_stats",
        "istio.alpn",
        "envoy.filters.http.fault",
        "envoy.filters.http.cors",
        "istio.stats",
    ]);
    let Decoded::Listener(x) = decode(ResourceType::Listener, &pack(&l)).unwrap() else {
        panic!()
    };
    assert_eq!(x.routes, ListenerRoutes::Rds("9080".into()));
    assert_eq!(x.port, Some(9080));
    assert!(!x.inbound);
    assert_eq!(
        Decoded::Listener(x).references(),
        vec![(ResourceType::RouteConfiguration, "9080".to_owned())]
    );
}

#[test]
fn unsupported_http_filter_is_rejected_with_its_path() {
    let l = hcm_with_filters(&["envoy.filters.http.ext_authz"]);
    assert_eq!(
        err(ResourceType::Listener, pack(&l)),
        "Listener 0.0.0.0_9080: filter_chains[0].filters[0].typed_config.http_filters[0].name: HTTP filter envoy.filters.http.ext_authz is not supported"
    );
}

#[test]
fn a_jwt_authn_filter_is_refused_even_when_optional() {
    for inbound in [false, true] {
        let mut l = hcm_with_filters(&["envoy.filters.http.jwt_authn"]);
        if inbound {
            l.traffic_direction = 1;
        }
        let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
        else {
            unreachable!()
        };
        let mut hcm: HttpConnectionManager = unpack(any, "").unwrap();
        hcm.http_filters[0].is_optional = true;
        l.filter_chains[0].filters[0].config_type =
            Some(filter::ConfigType::TypedConfig(pack(&hcm)));
        let e = err(ResourceType::Listener, pack(&l));
        assert!(
            e.ends_with(
                "http_filters[0].name: HTTP filter envoy.filters.http.jwt_authn (JWT \
                 authentication) is not supported from xDS; give the RequestAuthentication in \
                 the Istio YAML files"
            ),
            "{e}"
        );
    }
}

#[test]
fn router_must_be_last_and_present() {
    let mut l = hcm_with_filters(&[]);
    let Some(filter::ConfigType::TypedConfig(any)) = &l.filter_chains[0].filters[0].config_type
    else {
        unreachable!()
    };
    let mut hcm: HttpConnectionManager = unpack(any, "").unwrap();
    hcm.http_filters.clear();
    l.filter_chains[0].filters[0].config_type = Some(filter::ConfigType::TypedConfig(pack(&hcm)));
    assert!(
        err(ResourceType::Listener, pack(&l))
            .ends_with("http_filters: no envoy.filters.http.router filter")
    );
}

#[test]
fn inline_route_config_is_translated() {
    let hcm = HttpConnectionManager {
        route_specifier: Some(RouteSpecifier::RouteConfig(fixtures::route_config(
            "inline",
            &["reviews"],
            &[(C1, 100)],
        ))),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack(
                &envoy_types::pb::envoy::extensions::filters::http::router::v3::Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut l = fixtures::listener(80, "unused");
    l.filter_chains[0].filters[0].config_type = Some(filter::ConfigType::TypedConfig(pack(&hcm)));
    let Decoded::Listener(x) = decode(ResourceType::Listener, &pack(&l)).unwrap() else {
        panic!()
    };
    let ListenerRoutes::Inline(rc) = &x.routes else {
        panic!("{:?}", x.routes)
    };
    assert_eq!(rc.virtual_hosts[0].domains, ["reviews"]);
    assert!(Decoded::Listener(x).references().is_empty());
}

#[test]
fn route_matches_headers_query_and_method() {
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    let m = rc.virtual_hosts[0].routes[0].r#match.as_mut().unwrap();
    m.path_specifier = Some(PathSpecifier::SafeRegex(RegexMatcher {
        regex: "/api/v[0-9]+/.*".into(),
        ..Default::default()
    }));
    m.case_sensitive = Some(BoolValue { value: false });
    m.headers = vec![
        HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::ExactMatch("GET".into())),
            ..Default::default()
        },
        HeaderMatcher {
            name: "X-User".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Prefix("jason".into())),
                ..Default::default()
            })),
            ..Default::default()
        },
        HeaderMatcher {
            name: "x-debug".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
            invert_match: true,
            ..Default::default()
        },
    ];
    m.query_parameters = vec![QueryParameterMatcher {
        name: "v".into(),
        query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Exact("2".into())),
                ..Default::default()
            },
        )),
    }];
    let r = route_of(&rc);
    let m = &r.matches[0];
    assert!(
        matches!(&m.uri, Some(StringMatch::Regex(p)) if p.is_match("/api/v2/x") && !p.is_match("/x/api/v2/"))
    );
    assert!(m.ignore_uri_case);
    assert_eq!(m.method, Some(StringMatch::Exact("GET".into())));
    assert_eq!(
        m.headers,
        vec![(
            "x-user".to_owned(),
            Some(StringMatch::Prefix("jason".into()))
        )]
    );
    assert_eq!(m.without_headers, vec![("x-debug".to_owned(), None)]);
    assert_eq!(
        m.query_params,
        vec![("v".to_owned(), Some(StringMatch::Exact("2".into())))]
    );
}

#[test]
fn retriable_status_codes_count_only_under_their_condition() {
    let retry_on = |conditions: &str| {
        let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
        let Some(rpb::route::Action::Route(a)) = rc.virtual_hosts[0].routes[0].action.as_mut()
        else {
            unreachable!()
        };
        a.retry_policy = Some(PbRetry {
            retry_on: conditions.into(),
            retriable_status_codes: vec![503, 409],
            ..Default::default()
        });
        route_of(&rc).retry.unwrap().retry_on
    };
    let with = retry_on("connect-failure,retriable-status-codes");
    assert!(with.contains(RetryCondition::RetriableStatusCodes));
    assert_eq!(with.status_codes(), &[503, 409]);
    // Envoy ignores the codes without the condition.
    let without = retry_on("connect-failure");
    assert!(!without.contains(RetryCondition::RetriableStatusCodes));
    assert!(without.status_codes().is_empty());
    assert!(without.contains(RetryCondition::ConnectFailure));
}

#[test]
fn route_action_weights_retry_timeout_mirror_headers_fault() {
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 90), (C2, 10)]);
    rc.request_headers_to_remove = vec!["x-internal".into()];
    let route = &mut rc.virtual_hosts[0].routes[0];
    route.request_headers_to_add = vec![
        HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-set".into(),
                value: "1".into(),
                ..Default::default()
            }),
            append: Some(BoolValue { value: false }),
            ..Default::default()
        },
        HeaderValueOption {
            header: Some(HeaderValue {
                key: "x-add".into(),
                value: "2".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    route.response_headers_to_remove = vec!["server".into()];
    route.typed_per_filter_config.insert(
        "envoy.filters.http.fault".into(),
        pack(&HttpFault {
            delay: Some(PbDelay {
                percentage: Some(FractionalPercent {
                    numerator: 10,
                    denominator: 0,
                }),
                fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(dur(5, 0))),
            }),
            abort: Some(PbAbort {
                percentage: Some(FractionalPercent {
                    numerator: 1,
                    denominator: 1,
                }),
                error_type: Some(ErrorType::HttpStatus(503)),
                ..Default::default()
            }),
            ..Default::default()
        }),
    );
    let Some(rpb::route::Action::Route(a)) = route.action.as_mut() else {
        unreachable!()
    };
    a.timeout = Some(dur(3, 500));
    a.retry_policy = Some(PbRetry {
        retry_on: "5xx,connect-failure".into(),
        num_retries: Some(UInt32Value { value: 3 }),
        per_try_timeout: Some(dur(1, 0)),
        // As istiod sets them for `retryIgnorePreviousHosts` (its default).
        retry_host_predicate: vec![rpb::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".into(),
            ..Default::default()
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    });
    a.request_mirror_policies = vec![RequestMirrorPolicy {
        cluster: C2.into(),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 25,
                denominator: 0,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }];
    a.prefix_rewrite = "/v2/".into();

    let r = route_of(&rc);
    let RouteAction::Forward(f) = &r.action else {
        panic!("{:?}", r.action)
    };
    assert_eq!(
        f.destinations
            .iter()
            .map(|d| (d.cluster.as_str(), d.weight))
            .collect::<Vec<_>>(),
        [(C1, 90), (C2, 10)]
    );
    assert_eq!(
        f.rewrite.as_ref().unwrap().uri_prefix.as_deref(),
        Some("/v2/")
    );
    assert_eq!(r.timeout, Some(std::time::Duration::from_millis(3500)));
    let retry = r.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.retry_on.to_string().as_str()),
        (3, "5xx,connect-failure")
    );
    assert_eq!(
        retry.per_try_timeout,
        Some(std::time::Duration::from_secs(1))
    );
    assert_eq!(retry.backoff_base, std::time::Duration::from_millis(25));
    assert!(retry.ignore_previous_hosts);
    assert_eq!(r.mirrors.len(), 1);
    assert_eq!(r.mirrors[0].host, "reviews.default.svc.cluster.local");
    assert_eq!(
        r.mirrors[0].percentage,
        Percentage::from_ppm(250_000).unwrap()
    );
    assert_eq!(
        r.request_headers.set,
        vec![("x-set".to_owned(), "1".to_owned())]
    );
    assert_eq!(
        r.request_headers.add,
        vec![("x-add".to_owned(), "2".to_owned())]
    );
    assert_eq!(r.request_headers.remove, vec!["x-internal".to_owned()]);
    assert_eq!(r.response_headers.remove, vec!["server".to_owned()]);
    let fault = r.fault.as_ref().unwrap();
    assert_eq!(
        fault.delay.as_ref().unwrap().percentage,
        Percentage::from_ppm(100_000).unwrap()
    );
    assert_eq!(fault.abort.as_ref().unwrap().error, AbortError::Http(503));
    assert_eq!(
        fault.abort.as_ref().unwrap().percentage,
        Percentage::from_ppm(100).unwrap()
    );
}

#[test]
fn unset_timeout_is_envoys_15_seconds_and_zero_disables() {
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    assert_eq!(
        route_of(&rc).timeout,
        None,
        "the fixture sets 0s: no timeout"
    );
    let Some(rpb::route::Action::Route(a)) = rc.virtual_hosts[0].routes[0].action.as_mut() else {
        unreachable!()
    };
    a.timeout = None;
    assert_eq!(
        route_of(&rc).timeout,
        Some(std::time::Duration::from_secs(15))
    );
}

#[test]
fn route_errors_name_the_field() {
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 0), (C2, 0)]);
    assert_eq!(
        err(ResourceType::RouteConfiguration, pack(&rc)),
        "RouteConfiguration r: virtual_hosts[0].routes[0].route.weighted_clusters.clusters: weights sum to 0"
    );
    rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    rc.virtual_hosts[0].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .headers = vec![HeaderMatcher {
        name: "x".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::SuffixMatch("z".into())),
        ..Default::default()
    }];
    assert_eq!(
        err(ResourceType::RouteConfiguration, pack(&rc)),
        "RouteConfiguration r: virtual_hosts[0].routes[0].match.headers[0].header_match_specifier: range, suffix and contains header matches are not supported"
    );
    rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .insert(
            "envoy.filters.http.ext_authz".into(),
            pack(&BoolValue { value: true }),
        );
    assert!(err(ResourceType::RouteConfiguration, pack(&rc)).contains(
        "typed_per_filter_config.envoy.filters.http.ext_authz: per-route config for this filter is not supported"
    ));
    rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    let Some(rpb::route::Action::Route(a)) = rc.virtual_hosts[0].routes[0].action.as_mut() else {
        unreachable!()
    };
    a.retry_policy = Some(PbRetry {
        retry_host_predicate: vec![rpb::retry_policy::RetryHostPredicate {
            name: "envoy.retry_host_predicates.omit_canary_hosts".into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert!(err(ResourceType::RouteConfiguration, pack(&rc)).contains(
        "retry_policy.retry_host_predicate[0]: retry host predicate \"envoy.retry_host_predicates.omit_canary_hosts\" is not supported"
    ));
}

#[test]
fn redirect_and_direct_response() {
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    rc.virtual_hosts[0].routes[0].action =
        Some(rpb::route::Action::Redirect(rpb::RedirectAction {
            host_redirect: "example.com".into(),
            response_code: 1,
            scheme_rewrite_specifier: Some(
                rpb::redirect_action::SchemeRewriteSpecifier::HttpsRedirect(true),
            ),
            ..Default::default()
        }));
    let RouteAction::Redirect(r) = route_of(&rc).action else {
        panic!()
    };
    assert_eq!(
        (r.code, r.authority.as_deref(), r.scheme.as_deref()),
        (302, Some("example.com"), Some("https"))
    );

    rc.virtual_hosts[0].routes[0].action = Some(rpb::route::Action::DirectResponse(
        rpb::DirectResponseAction {
            status: 418,
            body: Some(envoy_types::pb::envoy::config::core::v3::DataSource {
                specifier: Some(
                    envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineString(
                        "teapot".into(),
                    ),
                ),
                ..Default::default()
            }),
            ..Default::default()
        },
    ));
    let RouteAction::DirectResponse(d) = route_of(&rc).action else {
        panic!()
    };
    assert_eq!((d.status, d.body.as_deref()), (418, Some(&b"teapot"[..])));
}

#[test]
fn cluster_policy_circuit_breakers_outlier_detection_and_tls() {
    let mut c = fixtures::eds_cluster(C1);
    c.lb_policy = 1; // LEAST_REQUEST
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: Some(UInt32Value { value: 100 }),
            max_pending_requests: Some(UInt32Value { value: 10 }),
            max_requests: Some(UInt32Value { value: 1000 }),
            max_retries: Some(UInt32Value { value: 5 }),
            ..Default::default()
        }],
        ..Default::default()
    });
    c.outlier_detection = Some(PbOutlier {
        consecutive_5xx: Some(UInt32Value { value: 7 }),
        interval: Some(dur(5, 0)),
        base_ejection_time: Some(dur(60, 0)),
        max_ejection_percent: Some(UInt32Value { value: 50 }),
        ..Default::default()
    });
    let sds = |name: &str| SdsSecretConfig {
        name: name.into(),
        ..Default::default()
    };
    let tls = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![sds("default")],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds(
                    "ROOTCA",
                )),
            ),
            ..Default::default()
        }),
        sni: "outbound_.9080_.v1_.reviews.default.svc.cluster.local".into(),
        ..Default::default()
    };
    c.transport_socket_matches = vec![TransportSocketMatch {
        name: "tlsMode-istio".into(),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack(&tls))),
        }),
        ..Default::default()
    }];
    let Decoded::Cluster(x) = decode(ResourceType::Cluster, &pack(&c)).unwrap() else {
        panic!()
    };
    assert_eq!(x.eds_name.as_deref(), Some(C1));
    assert_eq!(x.sds_secrets, ["default", "ROOTCA"]);
    let cl = &x.cluster;
    assert_eq!(
        (cl.port, cl.subset.as_deref(), cl.service.as_str()),
        (9080, Some("v1"), "reviews.default.svc.cluster.local")
    );
    assert_eq!(cl.policy.load_balancer.algorithm, LbAlgorithm::LeastRequest);
    let pool = &cl.policy.connection_pool;
    assert_eq!(
        (
            pool.max_connections,
            pool.http1_max_pending_requests,
            pool.http2_max_requests,
            pool.max_retries
        ),
        (100, 10, 1000, 5)
    );
    assert_eq!(pool.connect_timeout, std::time::Duration::from_secs(1));
    let od = cl.policy.outlier_detection.as_ref().unwrap();
    assert_eq!(
        (od.consecutive_5xx_errors, od.max_ejection_percent),
        (Some(7), 50)
    );
    assert_eq!(od.base_ejection_time, std::time::Duration::from_secs(60));
    assert_eq!(od.consecutive_gateway_errors, None);
    let tls = cl.policy.tls.as_ref().unwrap();
    assert_eq!(tls.mode, TlsMode::IstioMutual);
    assert!(tls.sni.as_deref().unwrap().starts_with("outbound_.9080_"));
}

#[test]
fn cluster_defaults_are_envoys() {
    let Decoded::Cluster(x) = decode(
        ResourceType::Cluster,
        &pack(&fixtures::eds_cluster("plain")),
    )
    .unwrap() else {
        panic!()
    };
    let pool = &x.cluster.policy.connection_pool;
    assert_eq!((pool.max_connections, pool.max_retries), (1024, 3));
    assert!(!x.istio_name);
    assert_eq!(x.cluster.port, 0);
}

#[test]
fn outlier_max_ejection_time_is_translated_and_may_not_be_below_the_base() {
    let outlier = |base: Option<PbDuration>, max: Option<PbDuration>| {
        let mut c = fixtures::eds_cluster(C1);
        c.outlier_detection = Some(PbOutlier {
            base_ejection_time: base,
            max_ejection_time: max,
            ..Default::default()
        });
        pack(&c)
    };
    let od = |any: Any| match decode(ResourceType::Cluster, &any).unwrap() {
        Decoded::Cluster(x) => x.cluster.policy.outlier_detection.unwrap(),
        other => panic!("{other:?}"),
    };
    let secs = std::time::Duration::from_secs;
    let set = od(outlier(Some(dur(10, 0)), Some(dur(25, 0))));
    assert_eq!(set.max_ejection_time, Some(secs(25)));
    assert_eq!(set.max_ejection_time(), secs(25));
    // Unset: Envoy's default, 300 s or the base when longer.
    let unset = od(outlier(None, None));
    assert_eq!(
        (unset.max_ejection_time, unset.max_ejection_time()),
        (None, secs(300))
    );
    assert_eq!(
        od(outlier(Some(dur(400, 0)), None)).max_ejection_time(),
        secs(400)
    );
    // Below the base: refused, as Envoy refuses it.
    let e = err(
        ResourceType::Cluster,
        outlier(Some(dur(60, 0)), Some(dur(30, 0))),
    );
    assert!(e.contains("outlier_detection.max_ejection_time"), "{e}");
}

#[test]
fn static_cluster_carries_its_endpoints_and_ring_hash_is_rejected() {
    let mut c = fixtures::eds_cluster("static");
    c.cluster_discovery_type =
        Some(envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(0));
    c.eds_cluster_config = None;
    c.load_assignment = Some(fixtures::endpoints(
        "static",
        &["127.0.0.1:9".parse().unwrap()],
    ));
    let Decoded::Cluster(x) = decode(ResourceType::Cluster, &pack(&c)).unwrap() else {
        panic!()
    };
    assert_eq!(x.eds_name, None);
    assert_eq!(x.cluster.endpoints[0].authority(), "127.0.0.1:9");

    c.lb_policy = 5; // MAGLEV
    let Decoded::Cluster(x) = decode(ResourceType::Cluster, &pack(&c)).unwrap() else {
        panic!()
    };
    assert_eq!(
        x.hash_table,
        Some(mesh_core::model::HashTable::Maglev { table_size: 65537 })
    );
    c.lb_policy = 99;
    assert_eq!(
        err(ResourceType::Cluster, pack(&c)),
        "Cluster static: lb_policy: unknown policy 99"
    );
}

#[test]
fn ring_hash_cluster_takes_its_key_from_the_route_hash_policy() {
    use rpb::route_action::{HashPolicy, hash_policy};
    let mut c = fixtures::eds_cluster(C1);
    c.lb_policy = 2; // RING_HASH
    c.lb_config = Some(
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig::RingHashLbConfig(
            envoy_types::pb::envoy::config::cluster::v3::cluster::RingHashLbConfig {
                minimum_ring_size: Some(envoy_types::pb::google::protobuf::UInt64Value {
                    value: 4096,
                }),
                ..Default::default()
            },
        ),
    );
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    let Some(rpb::route::Action::Route(a)) = rc.virtual_hosts[0].routes[0].action.as_mut() else {
        unreachable!()
    };
    a.hash_policy = vec![HashPolicy {
        policy_specifier: Some(hash_policy::PolicySpecifier::Header(hash_policy::Header {
            header_name: "X-User".into(),
            ..Default::default()
        })),
        ..Default::default()
    }];
    let Decoded::Cluster(c) = decode(ResourceType::Cluster, &pack(&c)).unwrap() else {
        panic!()
    };
    let Decoded::RouteConfiguration(r) =
        decode(ResourceType::RouteConfiguration, &pack(&rc)).unwrap()
    else {
        panic!()
    };
    let l = XdsListener {
        name: "l".into(),
        routes: ListenerRoutes::Rds("r".into()),
        inbound: false,
        port: None,
        any_address: false,
        use_original_dst: false,
        blocks_unknown: false,
        inbound_http: None,
        address: None,
        tcp_chains: Vec::new(),
    };
    let mut res = Resources::default();
    res.listeners.insert("l", &l);
    res.routes.insert("r", &r);
    res.clusters.insert(C1, &c);
    let cfg = assemble(&res, &Workload::default());
    assert_eq!(
        cfg.cluster(&mesh_core::model::ClusterName::new(C1))
            .unwrap()
            .policy
            .load_balancer
            .algorithm,
        LbAlgorithm::ConsistentHash(mesh_core::model::ConsistentHash {
            key: mesh_core::model::HashKey::Header("x-user".into()),
            table: mesh_core::model::HashTable::RingHash {
                minimum_ring_size: 4096
            },
        })
    );
}

#[test]
fn an_endpoint_s_istio_workload_metadata_names_its_workload_for_the_metrics() {
    let mut cla = fixtures::endpoints(
        C1,
        &[
            "10.0.0.1:9080".parse().unwrap(),
            "10.0.0.2:9080".parse().unwrap(),
            "10.0.0.3:9080".parse().unwrap(),
        ],
    );
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let istio = |fields: Vec<(&str, Value)>| {
        Some(Metadata {
            filter_metadata: [(
                "istio".to_owned(),
                Struct {
                    fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                },
            )]
            .into(),
            ..Default::default()
        })
    };
    let lb = &mut cla.endpoints[0].lb_endpoints;
    // What istiod writes: NAME;NAMESPACE;CANONICAL_SERVICE;CANONICAL_REVISION;CLUSTER_ID.
    lb[0].metadata = istio(vec![(
        "workload",
        s("reviews-v2;shop;reviews;v2;Kubernetes"),
    )]);
    // Not Istio's form: ignored, as Istio's reader ignores it.
    lb[1].metadata = istio(vec![("workload", s("reviews-v2;shop"))]);
    // Explicit fields win over the workload string's.
    lb[2].metadata = istio(vec![
        ("workload", s("ratings-v1;shop;ratings;v1;east")),
        ("namespace", s("other")),
    ]);
    let Decoded::ClusterLoadAssignment(x) =
        decode(ResourceType::ClusterLoadAssignment, &pack(&cla)).unwrap()
    else {
        panic!()
    };
    let [a, b, c] = &x.endpoints[..] else {
        panic!()
    };
    assert_eq!(a.workload.as_deref(), Some("reviews-v2"));
    assert_eq!(a.namespace.as_deref(), Some("shop"));
    assert_eq!(a.cluster_id.as_deref(), Some("Kubernetes"));
    let label = |e: &mesh_core::model::Endpoint, k: &str| e.labels.get(k).cloned();
    assert_eq!(
        label(a, "service.istio.io/canonical-name").as_deref(),
        Some("reviews")
    );
    assert_eq!(
        label(a, "service.istio.io/canonical-revision").as_deref(),
        Some("v2")
    );
    assert_eq!((b.workload.as_ref(), b.namespace.as_ref()), (None, None));
    assert!(b.labels.is_empty());
    assert_eq!(c.workload.as_deref(), Some("ratings-v1"));
    assert_eq!(c.namespace.as_deref(), Some("other"));
    assert_eq!(c.cluster_id.as_deref(), Some("east"));
}

#[test]
fn endpoints_with_localities_weights_health_and_istio_labels() {
    let mut cla = fixtures::endpoints(
        C1,
        &[
            "10.0.0.1:9080".parse().unwrap(),
            "10.0.0.2:9080".parse().unwrap(),
        ],
    );
    let loc = &mut cla.endpoints[0];
    loc.locality = Some(PbLocality {
        region: "us-east1".into(),
        zone: "b".into(),
        sub_zone: String::new(),
    });
    loc.lb_endpoints[0].load_balancing_weight = Some(UInt32Value { value: 3 });
    loc.lb_endpoints[1].health_status = 3; // DRAINING
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    loc.lb_endpoints[0].metadata = Some(Metadata {
        filter_metadata: [(
            "istio".to_owned(),
            Struct {
                fields: [
                    (
                        "labels".to_owned(),
                        Value {
                            kind: Some(Kind::StructValue(Struct {
                                fields: [("version".to_owned(), s("v1"))].into(),
                            })),
                        },
                    ),
                    ("service_account".to_owned(), s("reviews")),
                    ("namespace".to_owned(), s("default")),
                ]
                .into(),
            },
        )]
        .into(),
        ..Default::default()
    });
    let Decoded::ClusterLoadAssignment(x) =
        decode(ResourceType::ClusterLoadAssignment, &pack(&cla)).unwrap()
    else {
        panic!()
    };
    let [a, b] = &x.endpoints[..] else { panic!() };
    assert_eq!((a.weight, a.health), (3, HealthStatus::Healthy));
    assert_eq!(b.health, HealthStatus::Draining);
    assert_eq!(a.locality.to_string(), "us-east1/b/");
    assert_eq!(a.labels.get("version").map(String::as_str), Some("v1"));
    assert_eq!(a.service_account.as_deref(), Some("reviews"));
    assert_eq!(a.namespace.as_deref(), Some("default"));

    // A failover level: its endpoints carry their priority.
    let mut failover = cla.endpoints[0].clone();
    failover.priority = 1;
    cla.endpoints.push(failover);
    let Decoded::ClusterLoadAssignment(x) =
        decode(ResourceType::ClusterLoadAssignment, &pack(&cla)).unwrap()
    else {
        panic!()
    };
    let priorities: Vec<u32> = x.endpoints.iter().map(|e| e.priority).collect();
    assert_eq!(priorities, [0, 0, 1, 1]);
    cla.endpoints.pop();
    cla.endpoints[0].lb_endpoints[1].host_identifier =
        Some(lb_endpoint::HostIdentifier::EndpointName("x".into()));
    assert!(
        err(ResourceType::ClusterLoadAssignment, pack(&cla))
            .contains("endpoints[0].lb_endpoints[1].endpoint_name")
    );
}

#[test]
fn eds_health_statuses_map_to_the_model_degraded_apart() {
    let addrs: Vec<std::net::SocketAddr> = (1..=6)
        .map(|i| format!("10.0.0.{i}:9080").parse().unwrap())
        .collect();
    let mut cla = fixtures::endpoints(C1, &addrs);
    // UNKNOWN, HEALTHY, UNHEALTHY, DRAINING, TIMEOUT, DEGRADED.
    for (e, status) in cla.endpoints[0].lb_endpoints.iter_mut().zip(0..) {
        e.health_status = status;
    }
    let Decoded::ClusterLoadAssignment(x) =
        decode(ResourceType::ClusterLoadAssignment, &pack(&cla)).unwrap()
    else {
        panic!()
    };
    let health: Vec<HealthStatus> = x.endpoints.iter().map(|e| e.health).collect();
    assert_eq!(
        health,
        [
            HealthStatus::Healthy,
            HealthStatus::Healthy,
            HealthStatus::Unhealthy,
            HealthStatus::Draining,
            HealthStatus::Unhealthy,
            HealthStatus::Degraded,
        ]
    );
}

#[test]
fn assemble_merges_listeners_and_fills_eds_endpoints() {
    let l = hcm_with_filters(&[]);
    let Decoded::Listener(l) = decode(ResourceType::Listener, &pack(&l)).unwrap() else {
        panic!()
    };
    let Decoded::RouteConfiguration(r) = decode(
        ResourceType::RouteConfiguration,
        &pack(&fixtures::route_config(
            "9080",
            &["reviews", "reviews:9080"],
            &[(C1, 100)],
        )),
    )
    .unwrap() else {
        panic!()
    };
    let Decoded::Cluster(c) =
        decode(ResourceType::Cluster, &pack(&fixtures::eds_cluster(C1))).unwrap()
    else {
        panic!()
    };
    let Decoded::ClusterLoadAssignment(e) = decode(
        ResourceType::ClusterLoadAssignment,
        &pack(&fixtures::endpoints(
            C1,
            &["10.0.0.1:9080".parse().unwrap()],
        )),
    )
    .unwrap() else {
        panic!()
    };
    let mut res = Resources::default();
    res.listeners.insert(&l.name, &l);
    res.routes.insert(&r.name, &r);
    res.clusters.insert(C1, &c);
    res.endpoints.insert(C1, &e);
    let cfg = assemble(&res, &Workload::default());
    assert_eq!(cfg.routes.find("reviews:9080").unwrap().name, "reviews");
    assert_eq!(
        cfg.cluster(&mesh_core::model::ClusterName::new(C1))
            .unwrap()
            .endpoints
            .len(),
        1
    );
    let svc = cfg.service("reviews.default.svc.cluster.local").unwrap();
    assert_eq!(
        (svc.namespace.as_str(), svc.ports[0].number),
        ("default", 9080)
    );
}

#[test]
fn locality_weights_reach_the_model_when_the_cluster_weighs_localities() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        CommonLbConfig,
        common_lb_config::{LocalityConfigSpecifier, LocalityWeightedLbConfig},
    };
    use mesh_core::model::{LocalityDistribute, LocalityLb};
    let mut cla = fixtures::endpoints(C1, &["10.0.0.1:9080".parse().unwrap()]);
    let mut z2 = fixtures::endpoints(C1, &["10.0.0.2:9080".parse().unwrap()]).endpoints[0].clone();
    for (l, zone, weight) in [(&mut cla.endpoints[0], "z1", 20), (&mut z2, "z2", 80)] {
        l.locality = Some(PbLocality {
            region: "r".into(),
            zone: zone.into(),
            sub_zone: String::new(),
        });
        l.load_balancing_weight = Some(UInt32Value { value: weight });
    }
    cla.endpoints.push(z2);
    let Decoded::ClusterLoadAssignment(e) =
        decode(ResourceType::ClusterLoadAssignment, &pack(&cla)).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        e.locality_weights,
        [("r/z1/".to_owned(), 20), ("r/z2/".to_owned(), 80)]
    );
    let assembled = |weighted: bool| {
        let mut c = fixtures::eds_cluster(C1);
        if weighted {
            c.common_lb_config = Some(CommonLbConfig {
                locality_config_specifier: Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    LocalityWeightedLbConfig {},
                )),
                ..Default::default()
            });
        }
        let Decoded::Cluster(c) = decode(ResourceType::Cluster, &pack(&c)).unwrap() else {
            panic!()
        };
        let mut res = Resources::default();
        res.clusters.insert(C1, &c);
        res.endpoints.insert(C1, &e);
        assemble(&res, &Workload::default())
            .cluster(&mesh_core::model::ClusterName::new(C1))
            .unwrap()
            .policy
            .load_balancer
            .locality
            .clone()
    };
    assert_eq!(
        assembled(true),
        Some(LocalityLb {
            distribute: vec![LocalityDistribute {
                from: "*".into(),
                to: vec![("r/z1/".into(), 20), ("r/z2/".into(), 80)],
            }],
            ..LocalityLb::default()
        })
    );
    // Without locality_weighted_lb_config, Envoy ignores the weights.
    assert_eq!(assembled(false), None);

    cla.endpoints[1].load_balancing_weight = Some(UInt32Value { value: 0 });
    let e = err(ResourceType::ClusterLoadAssignment, pack(&cla));
    assert!(e.contains("endpoints[1].load_balancing_weight"), "{e}");
}

#[test]
fn parse_istio_names() {
    assert_eq!(
        parse_istio_name(C1),
        Some((9080, Some("v1"), "reviews.default.svc.cluster.local"))
    );
    assert_eq!(
        parse_istio_name("outbound|80||a.b"),
        Some((80, None, "a.b"))
    );
    assert_eq!(parse_istio_name("inbound|80||"), None);
    assert_eq!(parse_istio_name("outbound|x||a"), None);
    assert_eq!(parse_istio_name("BlackHoleCluster"), None);
}

#[test]
fn inbound_listeners_are_accepted_without_contributing_routes() {
    let mut l = hcm_with_filters(&["envoy.filters.http.rbac"]);
    assert!(
        decode(ResourceType::Listener, &pack(&l)).is_err(),
        "outbound: rbac is not supported"
    );
    l.traffic_direction = 1;
    // Inbound, the RBAC filter is translated: it needs its config.
    let err = decode(ResourceType::Listener, &pack(&l)).unwrap_err();
    assert!(err.field.ends_with("http_filters[0].typed_config"), "{err}");
    assert_eq!(err.reason, "missing");
    let mut l = hcm_with_filters(&[]);
    l.traffic_direction = 1;
    let Decoded::Listener(x) = decode(ResourceType::Listener, &pack(&l)).unwrap() else {
        panic!()
    };
    assert!(x.inbound);
    assert_eq!(x.routes, ListenerRoutes::None);
    let http = x.inbound_http.unwrap();
    assert!(http.authorization.is_empty());
    assert_eq!(http.ports.len(), 1, "one HTTP chain, without a port match");
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    fn valid(kind: ResourceType) -> Any {
        match kind {
            ResourceType::Listener => pack(&fixtures::listener(80, "80")),
            ResourceType::RouteConfiguration => {
                pack(&fixtures::route_config("80", &["a"], &[(C1, 60), (C2, 40)]))
            }
            ResourceType::Cluster => pack(&fixtures::eds_cluster(C1)),
            ResourceType::ClusterLoadAssignment => pack(&fixtures::endpoints(
                C1,
                &[
                    "10.0.0.1:80".parse().unwrap(),
                    "10.0.0.2:80".parse().unwrap(),
                ],
            )),
            ResourceType::Secret => pack(
                &envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret {
                    name: "default".into(),
                    ..Default::default()
                },
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic: they decode to an error or to a checked resource.
        #[test]
        fn arbitrary_bytes(kind in 0usize..5, bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let kind = ResourceType::ALL[kind];
            let any = Any { type_url: kind.type_url().into(), value: bytes };
            let _ = decode(kind, &any);
        }

        /// Valid resources with bytes flipped or cut never panic.
        #[test]
        fn mutated_resources(kind in 0usize..5, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8), cut in any::<usize>()) {
            let kind = ResourceType::ALL[kind];
            let mut any = valid(kind);
            if !any.value.is_empty() {
                for (at, x) in flips {
                    let i = at % any.value.len();
                    any.value[i] ^= x;
                }
                let keep = cut % (any.value.len() + 1);
                any.value.truncate(keep);
            }
            let _ = decode(kind, &any);
        }
    }
}

#[test]
fn a_retry_budget_in_the_circuit_breakers_replaces_max_retries() {
    use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
    use envoy_types::pb::envoy::r#type::v3::Percent;
    let mut c = fixtures::eds_cluster(C1);
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            retry_budget: Some(RetryBudget {
                budget_percent: Some(Percent { value: 25.0 }),
                min_retry_concurrency: Some(UInt32Value { value: 5 }),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });
    let Decoded::Cluster(x) = decode(ResourceType::Cluster, &pack(&c)).unwrap() else {
        panic!()
    };
    assert_eq!(
        x.cluster.policy.connection_pool.retry_budget,
        Some(mesh_core::model::ClusterRetryBudget {
            budget_per_mille: 250,
            min_retry_concurrency: 5
        })
    );
    // Envoy's defaults for an empty budget: 20%, at least 3.
    c.circuit_breakers.as_mut().unwrap().thresholds[0].retry_budget = Some(RetryBudget::default());
    let Decoded::Cluster(x) = decode(ResourceType::Cluster, &pack(&c)).unwrap() else {
        panic!()
    };
    assert_eq!(
        x.cluster.policy.connection_pool.retry_budget,
        Some(mesh_core::model::ClusterRetryBudget {
            budget_per_mille: 200,
            min_retry_concurrency: 3
        })
    );
    // Not a percentage: a NACK naming the field.
    c.circuit_breakers.as_mut().unwrap().thresholds[0].retry_budget = Some(RetryBudget {
        budget_percent: Some(Percent { value: 120.0 }),
        ..Default::default()
    });
    let e = decode(ResourceType::Cluster, &pack(&c))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "circuit_breakers.thresholds[0].retry_budget.budget_percent: 120 is not a percentage"
        ),
        "{e}"
    );
}

#[test]
fn inbound_clusters_name_the_services_the_workload_serves() {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    let service = |host: &str, name: &str| Value {
        kind: Some(Kind::StructValue(Struct {
            fields: [
                ("host".to_owned(), s(host)),
                ("name".to_owned(), s(name)),
                ("namespace".to_owned(), s("shop")),
            ]
            .into(),
        })),
    };
    let with_services = |name: &str, services: Vec<Value>| {
        let mut c = fixtures::eds_cluster(name);
        c.metadata = Some(Metadata {
            filter_metadata: [(
                "istio".to_owned(),
                Struct {
                    fields: [(
                        "services".to_owned(),
                        Value {
                            kind: Some(Kind::ListValue(
                                envoy_types::pb::google::protobuf::ListValue { values: services },
                            )),
                        },
                    )]
                    .into(),
                },
            )]
            .into(),
            ..Default::default()
        });
        let Decoded::Cluster(x) = decode(ResourceType::Cluster, &pack(&c)).unwrap() else {
            panic!()
        };
        x
    };
    // Istio's form: inbound|PORT|| with the services in its metadata.
    let inbound_9080 = with_services(
        "inbound|9080||",
        vec![service("ratings.shop.svc.cluster.local", "ratings")],
    );
    let inbound_9090 = with_services(
        "inbound|9090||",
        vec![
            service("ratings-admin.shop.svc.cluster.local", "ratings-admin"),
            service("ratings.shop.svc.cluster.local", "ratings"),
        ],
    );
    // An outbound cluster's `services` metadata names the services it goes to, not this one.
    let outbound = with_services(C1, vec![service("reviews.shop.svc.cluster.local", "r")]);
    assert_eq!(
        inbound_9080.inbound_services,
        ["ratings.shop.svc.cluster.local"]
    );
    assert!(outbound.inbound_services.is_empty());
    let mut res = Resources::default();
    res.clusters.insert("inbound|9080||", &inbound_9080);
    res.clusters.insert("inbound|9090||", &inbound_9090);
    res.clusters.insert(C1, &outbound);
    let cfg = assemble(&res, &Workload::default());
    assert_eq!(
        cfg.workload_services,
        [
            "ratings-admin.shop.svc.cluster.local",
            "ratings.shop.svc.cluster.local"
        ]
    );
    // Per port, the first service each inbound cluster names.
    assert_eq!(
        cfg.workload_service_ports,
        [
            (9080, "ratings.shop.svc.cluster.local".to_owned()),
            (9090, "ratings-admin.shop.svc.cluster.local".to_owned())
        ]
        .into()
    );
}

/// An inbound listener with two HTTP chains (ports 9080 and 9090) whose connection managers
/// get `set`.
fn inbound_with_hcm(set: impl Fn(&mut HttpConnectionManager, usize)) -> Listener {
    let mut l = hcm_with_filters(&[]);
    l.traffic_direction = 1;
    l.filter_chains.push(l.filter_chains[0].clone());
    for (i, port) in [9080, 9090].into_iter().enumerate() {
        let chain = &mut l.filter_chains[i];
        chain.filter_chain_match = Some(
            envoy_types::pb::envoy::config::listener::v3::FilterChainMatch {
                destination_port: Some(UInt32Value { value: port }),
                ..Default::default()
            },
        );
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            unreachable!()
        };
        let mut hcm: HttpConnectionManager = unpack(any, "").unwrap();
        set(&mut hcm, i);
        chain.filters[0].config_type = Some(filter::ConfigType::TypedConfig(pack(&hcm)));
    }
    l
}

/// What istiod's inbound HCM carries for each of Istio's `pathNormalization` modes.
fn istiod_hcm(hcm: &mut HttpConnectionManager, mode: PathNormalization) {
    let (normalize, merge, action) = match mode {
        PathNormalization::None => (false, false, Action::KeepUnchanged),
        PathNormalization::Base => (true, false, Action::KeepUnchanged),
        PathNormalization::MergeSlashes => (true, true, Action::KeepUnchanged),
        PathNormalization::DecodeAndMergeSlashes => (true, true, Action::UnescapeAndForward),
    };
    hcm.normalize_path = Some(BoolValue { value: normalize });
    hcm.merge_slashes = merge;
    hcm.path_with_escaped_slashes_action = action as i32;
}

#[test]
fn the_inbound_connection_managers_path_normalization_is_the_workloads() {
    let translate = |l: &Listener| match decode(ResourceType::Listener, &pack(l)) {
        Ok(Decoded::Listener(x)) => Ok(x),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.to_string()),
    };
    for mode in [
        PathNormalization::None,
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        let x = translate(&inbound_with_hcm(|hcm, _| istiod_hcm(hcm, mode))).unwrap();
        assert_eq!(
            x.inbound_http.as_ref().unwrap().path_normalization,
            Some(mode)
        );
        let mut res = Resources::default();
        res.listeners.insert("virtualInbound", &x);
        assert_eq!(
            assemble(&res, &Workload::default()).path_normalization,
            mode
        );
    }
    // Without the fields, Envoy's defaults: nothing normalized.
    let x = translate(&inbound_with_hcm(|_, _| {})).unwrap();
    let mut res = Resources::default();
    res.listeners.insert("virtualInbound", &x);
    assert_eq!(
        assemble(&res, &Workload::default()).path_normalization,
        PathNormalization::None
    );
    // Without an inbound listener, Istio's default.
    assert_eq!(
        assemble(&Resources::default(), &Workload::default()).path_normalization,
        PathNormalization::Base
    );

    // What this proxy cannot honour is a NACK naming the field.
    for action in [Action::UnescapeAndRedirect, Action::RejectRequest] {
        let e = translate(&inbound_with_hcm(|hcm, _| {
            istiod_hcm(hcm, PathNormalization::MergeSlashes);
            hcm.path_with_escaped_slashes_action = action as i32;
        }))
        .unwrap_err();
        assert!(
            e.contains("filter_chains[0].filters[0].typed_config.path_with_escaped_slashes_action")
                && e.contains(action.as_str_name()),
            "{e}"
        );
    }
    let e = translate(&inbound_with_hcm(|hcm, _| hcm.merge_slashes = true)).unwrap_err();
    assert!(
        e.contains("filter_chains[0].filters[0].typed_config.merge_slashes"),
        "{e}"
    );
    let e = translate(&inbound_with_hcm(|hcm, _| {
        istiod_hcm(hcm, PathNormalization::Base);
        hcm.path_with_escaped_slashes_action = Action::UnescapeAndForward as i32;
    }))
    .unwrap_err();
    assert!(e.contains("path_with_escaped_slashes_action"), "{e}");
    // Two chains that disagree: the second is named.
    let e = translate(&inbound_with_hcm(|hcm, i| {
        let mode = [PathNormalization::Base, PathNormalization::MergeSlashes][i];
        istiod_hcm(hcm, mode);
    }))
    .unwrap_err();
    assert!(
        e.contains("filter_chains[1].filters[0].typed_config.normalize_path")
            && e.contains("MERGE_SLASHES differs from another filter chain's BASE"),
        "{e}"
    );
}

const REVIEWS_8080: &str = "outbound|8080||reviews.default.svc.cluster.local";
const REVIEWS_9080_V2: &str = "outbound|9080|v2|reviews.default.svc.cluster.local";

/// Istio's RDS for `port`: `reviews` with and without the port to `cluster`, and the `*`
/// virtual host (`allow_any`) to `catch_all`.
fn port_rds(name: &str, port: u16, cluster: &str, catch_all: &str) -> rpb::RouteConfiguration {
    let with_port = format!("reviews:{port}");
    let full = "reviews.default.svc.cluster.local";
    let full_with_port = format!("{full}:{port}");
    let mut rc = fixtures::route_config(
        name,
        &[&full_with_port, full, "reviews", &with_port],
        &[(cluster, 100)],
    );
    let mut any = fixtures::route_config("", &["*"], &[(catch_all, 100)]).virtual_hosts[0].clone();
    any.name = "allow_any".into();
    rc.virtual_hosts.push(any);
    rc
}

fn listener_of(l: &Listener) -> XdsListener {
    match decode(ResourceType::Listener, &pack(l)).unwrap() {
        Decoded::Listener(x) => x,
        other => panic!("{other:?}"),
    }
}

fn routes_of(rc: &rpb::RouteConfiguration) -> XdsRouteConfig {
    match decode(ResourceType::RouteConfiguration, &pack(rc)).unwrap() {
        Decoded::RouteConfiguration(r) => r,
        other => panic!("{other:?}"),
    }
}

/// The cluster a request to `port` for `authority` is forwarded to.
fn cluster_on(cfg: &MeshConfig, port: Option<u16>, authority: &str) -> String {
    let vh = cfg
        .routes
        .find_on_port(port, authority)
        .expect("virtual host");
    match &vh.routes[0].action {
        RouteAction::Forward(f) => f.destinations[0].cluster.as_str().to_owned(),
        other => panic!("{other:?}"),
    }
}

fn assemble_listeners(listeners: &[XdsListener], routes: &[XdsRouteConfig]) -> MeshConfig {
    let mut res = Resources::default();
    for l in listeners {
        res.listeners.insert(&l.name, l);
    }
    for r in routes {
        res.routes.insert(&r.name, r);
    }
    assemble(&res, &Workload::default())
}

#[test]
fn each_outbound_listener_port_routes_by_its_own_route_configuration() {
    let l8080 = listener_of(&fixtures::listener(8080, "8080"));
    let l9080 = listener_of(&fixtures::listener(9080, "9080"));
    assert_eq!((l8080.port, l8080.any_address), (Some(8080), true));
    let cfg = assemble_listeners(
        &[l8080, l9080],
        &[
            routes_of(&port_rds("8080", 8080, REVIEWS_8080, "PassthroughCluster")),
            routes_of(&port_rds("9080", 9080, REVIEWS_9080_V2, "BlackHoleCluster")),
        ],
    );
    assert!(cfg.routes.is_per_port());
    // `Host: reviews` (no port) sent to each port: that port's route.
    for authority in ["reviews", "reviews.default.svc.cluster.local"] {
        assert_eq!(cluster_on(&cfg, Some(8080), authority), REVIEWS_8080);
        assert_eq!(cluster_on(&cfg, Some(9080), authority), REVIEWS_9080_V2);
    }
    assert_eq!(
        cluster_on(&cfg, Some(9080), "reviews:9080"),
        REVIEWS_9080_V2
    );
    // Each port's own catch-all.
    assert_eq!(
        cluster_on(&cfg, Some(8080), "ratings"),
        "PassthroughCluster"
    );
    assert_eq!(cluster_on(&cfg, Some(9080), "ratings"), "BlackHoleCluster");
    // Another port, or none: the merged table, the first listener by name claiming first
    // (what every port got before).
    for port in [None, Some(80)] {
        assert_eq!(cluster_on(&cfg, port, "reviews"), REVIEWS_8080);
        assert_eq!(cluster_on(&cfg, port, "reviews:9080"), REVIEWS_9080_V2);
        assert_eq!(cluster_on(&cfg, port, "ratings"), "PassthroughCluster");
    }
}

#[test]
fn a_port_s_listener_on_every_address_claims_before_one_bound_to_an_address() {
    // `10.0.0.1_8080` sorts before `[::]_8080`; the `::` listener's routes still claim first.
    let mut any = fixtures::listener(8080, "8080");
    any.name = "[::]_8080".into();
    if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) =
        any.address.as_mut().and_then(|a| a.address.as_mut())
    {
        s.address = "::".into();
    }
    let mut bound = fixtures::listener(8080, "10.0.0.1_8080");
    bound.name = "10.0.0.1_8080".into();
    if let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) =
        bound.address.as_mut().and_then(|a| a.address.as_mut())
    {
        s.address = "10.0.0.1".into();
    }
    let (any, bound) = (listener_of(&any), listener_of(&bound));
    assert!(any.any_address && !bound.any_address);
    let mut ratings = port_rds("10.0.0.1_8080", 8080, C1, "BlackHoleCluster");
    for d in &mut ratings.virtual_hosts[0].domains {
        *d = d.replace("reviews", "ratings");
    }
    let l9080 = listener_of(&fixtures::listener(9080, "9080"));
    let cfg = assemble_listeners(
        &[any, bound, l9080],
        &[
            routes_of(&port_rds("8080", 8080, REVIEWS_8080, "PassthroughCluster")),
            routes_of(&ratings),
            routes_of(&port_rds("9080", 9080, REVIEWS_9080_V2, "BlackHoleCluster")),
        ],
    );
    assert_eq!(cluster_on(&cfg, Some(8080), "reviews"), REVIEWS_8080);
    assert_eq!(
        cluster_on(&cfg, Some(8080), "ratings"),
        C1,
        "the bound listener's own domain"
    );
    assert_eq!(cluster_on(&cfg, Some(8080), "other"), "PassthroughCluster");
    assert_eq!(cluster_on(&cfg, Some(9080), "ratings"), "BlackHoleCluster");
}

#[test]
fn one_outbound_listener_and_the_virtual_outbound_make_no_per_port_tables() {
    // istiod's `virtualOutbound` (here with an HTTP chain, to show its port gets no table)
    // and an inbound listener beside one outbound listener: the merged table alone, as before.
    let mut virtual_outbound = fixtures::listener(15001, "15001");
    virtual_outbound.name = "virtualOutbound".into();
    virtual_outbound.use_original_dst = Some(BoolValue { value: true });
    let virtual_outbound = listener_of(&virtual_outbound);
    assert!(virtual_outbound.use_original_dst);
    let mut inbound = fixtures::listener(15006, "inbound");
    inbound.name = "virtualInbound".into();
    inbound.traffic_direction = 1;
    let inbound = listener_of(&inbound);
    let l9080 = listener_of(&fixtures::listener(9080, "9080"));
    let rds = [
        routes_of(&port_rds(
            "9080",
            9080,
            REVIEWS_9080_V2,
            "PassthroughCluster",
        )),
        routes_of(&port_rds("15001", 15001, REVIEWS_8080, "BlackHoleCluster")),
        routes_of(&port_rds("inbound", 15006, C1, "BlackHoleCluster")),
    ];
    let one = assemble_listeners(&[l9080.clone(), inbound.clone()], &rds);
    assert!(!one.routes.is_per_port());
    assert_eq!(cluster_on(&one, Some(9080), "reviews"), REVIEWS_9080_V2);
    assert_eq!(cluster_on(&one, Some(8080), "reviews"), REVIEWS_9080_V2);

    // The virtual outbound listener's routes are merged (as before) but no port is its.
    let both = assemble_listeners(&[l9080, virtual_outbound, inbound], &rds);
    assert_eq!(
        both.routes.ports().map(|(p, _)| p).collect::<Vec<_>>(),
        [9080]
    );
    assert_eq!(cluster_on(&both, Some(15001), "reviews"), REVIEWS_9080_V2);
    assert_eq!(
        cluster_on(&both, Some(9080), "ratings"),
        "PassthroughCluster"
    );
}

#[test]
fn an_inline_route_configuration_serves_its_listener_s_port() {
    let mut inline = fixtures::listener(8080, "unused");
    let Some(filter::ConfigType::TypedConfig(any)) =
        &inline.filter_chains[0].filters[0].config_type
    else {
        unreachable!()
    };
    let mut hcm: HttpConnectionManager = unpack(any, "").unwrap();
    hcm.route_specifier = Some(RouteSpecifier::RouteConfig(port_rds(
        "inline",
        8080,
        REVIEWS_8080,
        "PassthroughCluster",
    )));
    inline.filter_chains[0].filters[0].config_type =
        Some(filter::ConfigType::TypedConfig(pack(&hcm)));
    let cfg = assemble_listeners(
        &[
            listener_of(&fixtures::listener(9080, "9080")),
            listener_of(&inline),
        ],
        &[routes_of(&port_rds(
            "9080",
            9080,
            REVIEWS_9080_V2,
            "BlackHoleCluster",
        ))],
    );
    assert_eq!(cluster_on(&cfg, Some(8080), "reviews"), REVIEWS_8080);
    assert_eq!(cluster_on(&cfg, Some(9080), "reviews"), REVIEWS_9080_V2);
}

fn exact(origin: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(origin.into())),
        ..Default::default()
    }
}

fn cors_config(route_cors: Option<Any>, vh_cors: Option<Any>) -> rpb::RouteConfiguration {
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    if let Some(c) = vh_cors {
        rc.virtual_hosts[0]
            .typed_per_filter_config
            .insert("envoy.filters.http.cors".into(), c);
    }
    if let Some(c) = route_cors {
        rc.virtual_hosts[0].routes[0]
            .typed_per_filter_config
            .insert("envoy.filters.http.cors".into(), c);
    }
    rc
}

/// What istiod writes for a VirtualService rule's corsPolicy (`TranslateCORSPolicy`).
fn istio_cors() -> cors_v3::CorsPolicy {
    cors_v3::CorsPolicy {
        allow_origin_string_match: vec![
            exact("https://app.example"),
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                    regex: r"https://.*\.corp\.example".into(),
                    ..Default::default()
                })),
                ..Default::default()
            },
        ],
        allow_methods: "GET,POST".into(),
        allow_headers: "content-type".into(),
        expose_headers: "x-trace".into(),
        max_age: "600".into(),
        allow_credentials: Some(BoolValue { value: true }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            ..Default::default()
        }),
        forward_not_matching_preflights: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

#[test]
fn a_routes_typed_per_filter_cors_policy_is_translated_as_istiod_writes_it() {
    let rc = cors_config(Some(pack(&istio_cors())), None);
    let cors = route_of(&rc).cors.expect("a CORS policy");
    assert_eq!(
        *cors,
        mesh_core::model::CorsPolicy {
            allow_origins: cors.allow_origins.clone(),
            allow_methods: "GET,POST".into(),
            allow_headers: "content-type".into(),
            expose_headers: "x-trace".into(),
            max_age: Some(600),
            allow_credentials: true,
            forward_unmatched_preflights: false,
        }
    );
    assert_eq!(
        cors.allow_origins[0],
        StringMatch::Exact("https://app.example".into())
    );
    assert!(cors.allows_origin("https://a.corp.example"));
    assert!(!cors.allows_origin("https://a.corp.example.evil"));
}

#[test]
fn the_deprecated_cors_fields_of_route_and_virtual_host_are_read_when_no_typed_config_is() {
    let legacy = |c: cors_v3::CorsPolicy| rpb::CorsPolicy {
        allow_origin_string_match: c.allow_origin_string_match,
        allow_methods: c.allow_methods,
        max_age: c.max_age,
        allow_credentials: c.allow_credentials,
        ..Default::default()
    };
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    // The virtual host's policy supplies what the route's leaves empty (Envoy's getters).
    rc.virtual_hosts[0].cors = Some(legacy(cors_v3::CorsPolicy {
        allow_methods: "PUT".into(),
        max_age: "60".into(),
        ..Default::default()
    }));
    let Some(rpb::route::Action::Route(a)) = rc.virtual_hosts[0].routes[0].action.as_mut() else {
        unreachable!()
    };
    a.cors = Some(legacy(cors_v3::CorsPolicy {
        allow_origin_string_match: vec![exact("https://app.example")],
        allow_methods: "GET".into(),
        ..Default::default()
    }));
    let cors = route_of(&rc).cors.expect("a CORS policy");
    assert_eq!(
        *cors,
        mesh_core::model::CorsPolicy {
            allow_origins: vec![StringMatch::Exact("https://app.example".into())],
            allow_methods: "GET".into(),
            max_age: Some(60),
            ..Default::default()
        }
    );
    // A typed policy anywhere puts the deprecated fields aside, as in Envoy.
    rc.virtual_hosts[0].typed_per_filter_config.insert(
        "envoy.filters.http.cors".into(),
        pack(&cors_v3::CorsPolicy {
            allow_origin_string_match: vec![exact("https://other.example")],
            ..Default::default()
        }),
    );
    let cors = route_of(&rc).cors.expect("a CORS policy");
    assert_eq!(
        cors.allow_origins,
        [StringMatch::Exact("https://other.example".into())]
    );
    assert_eq!((cors.allow_methods.as_str(), cors.max_age), ("", None));
}

#[test]
fn a_route_disabling_cors_has_none_and_routes_without_a_policy_have_none() {
    assert!(route_of(&cors_config(None, None)).cors.is_none());
    let off = cors_v3::CorsPolicy {
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent::default()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let rc = cors_config(Some(pack(&off)), Some(pack(&istio_cors())));
    assert!(route_of(&rc).cors.is_none());
}

#[test]
fn cors_settings_the_mesh_cannot_honour_are_nacked_with_their_path() {
    let field = "RouteConfiguration r: virtual_hosts[0].routes[0].typed_per_filter_config.envoy.filters.http.cors";
    let half = Some(RuntimeFractionalPercent {
        default_value: Some(FractionalPercent {
            numerator: 50,
            denominator: 0,
        }),
        ..Default::default()
    });
    for (policy, expected) in [
        (
            cors_v3::CorsPolicy {
                filter_enabled: half.clone(),
                ..istio_cors()
            },
            format!(
                "{field}.filter_enabled.default_value: 50% is not supported: only 0% or 100% (the mesh samples no runtime fraction)"
            ),
        ),
        (
            cors_v3::CorsPolicy {
                shadow_enabled: half,
                ..istio_cors()
            },
            format!("{field}.shadow_enabled: shadow mode is not supported"),
        ),
        (
            cors_v3::CorsPolicy {
                allow_private_network_access: Some(BoolValue { value: true }),
                ..istio_cors()
            },
            format!("{field}.allow_private_network_access: is not supported"),
        ),
        (
            cors_v3::CorsPolicy {
                max_age: "10m".into(),
                ..istio_cors()
            },
            format!("{field}.max_age: \"10m\" is not a number of seconds"),
        ),
        (
            cors_v3::CorsPolicy {
                allow_origin_string_match: vec![StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
                        regex: "(".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..istio_cors()
            },
            format!("{field}.allow_origin_string_match[0].safe_regex.regex: invalid regex"),
        ),
    ] {
        let e = err(
            ResourceType::RouteConfiguration,
            pack(&cors_config(Some(pack(&policy)), None)),
        );
        assert!(e.starts_with(&expected), "{e}\nexpected: {expected}");
    }
    // The deprecated field has its own path.
    let mut rc = fixtures::route_config("r", &["reviews"], &[(C1, 100)]);
    rc.virtual_hosts[0].cors = Some(rpb::CorsPolicy {
        max_age: "soon".into(),
        ..Default::default()
    });
    assert_eq!(
        err(ResourceType::RouteConfiguration, pack(&rc)),
        "RouteConfiguration r: virtual_hosts[0].cors.max_age: \"soon\" is not a number of seconds"
    );
}

/// istiod's `virtualOutbound` listener on 15001 whose catch-all chain proxies opaque TCP to
/// `cluster` (`PassthroughCluster` under ALLOW_ANY, `BlackHoleCluster` under REGISTRY_ONLY).
fn virtual_outbound(cluster: &str, as_default_chain: bool) -> Listener {
    use envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy::ClusterSpecifier,
    };
    let chain = FilterChain {
        name: "PassthroughFilterChain".into(),
        filters: vec![envoy_types::pb::envoy::config::listener::v3::Filter {
            name: "envoy.filters.network.tcp_proxy".into(),
            config_type: Some(filter::ConfigType::TypedConfig(pack(&TcpProxy {
                stat_prefix: cluster.into(),
                cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
                ..Default::default()
            }))),
        }],
        ..Default::default()
    };
    let mut l = fixtures::listener(15001, "15001");
    l.name = "virtualOutbound".into();
    l.use_original_dst = Some(BoolValue { value: true });
    if as_default_chain {
        l.filter_chains.clear();
        l.default_filter_chain = Some(chain);
    } else {
        // Older istiod: the catch-all is a chain with an empty match.
        l.filter_chains = vec![chain];
    }
    l
}

#[test]
fn istiod_s_registry_only_reaches_the_capture_through_the_virtual_outbound_catch_all() {
    for (cluster, as_default_chain, expected) in [
        ("PassthroughCluster", true, OutboundTrafficPolicy::AllowAny),
        (
            "BlackHoleCluster",
            true,
            OutboundTrafficPolicy::RegistryOnly,
        ),
        (
            "BlackHoleCluster",
            false,
            OutboundTrafficPolicy::RegistryOnly,
        ),
        ("PassthroughCluster", false, OutboundTrafficPolicy::AllowAny),
    ] {
        let l = listener_of(&virtual_outbound(cluster, as_default_chain));
        let cfg = assemble_listeners(&[l], &[]);
        assert_eq!(
            cfg.outbound_traffic_policy, expected,
            "{cluster}, default chain {as_default_chain}"
        );
    }
    // A listener that does not hand connections on says nothing of the policy.
    let mut plain = virtual_outbound("BlackHoleCluster", true);
    plain.use_original_dst = None;
    let cfg = assemble_listeners(&[listener_of(&plain)], &[]);
    assert_eq!(cfg.outbound_traffic_policy, OutboundTrafficPolicy::AllowAny);
}

const DB: &str = "db.default.svc.cluster.local";
const DB_OWN: &str = "outbound|5432||db.default.svc.cluster.local";
const DB_V1: &str = "outbound|5432|v1|db.default.svc.cluster.local";
const DB_V2: &str = "outbound|5432|v2|db.default.svc.cluster.local";

type TcpProxy = envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;

/// A tcp_proxy as istiod writes it: to one cluster, or weighted clusters.
fn tcp_proxy_to(clusters: &[(&str, u32)]) -> TcpProxy {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
        ClusterSpecifier, WeightedCluster, weighted_cluster::ClusterWeight,
    };
    let cluster_specifier = if let [(single, _)] = clusters {
        ClusterSpecifier::Cluster((*single).into())
    } else {
        ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: (*name).into(),
                    weight: *weight,
                    ..Default::default()
                })
                .collect(),
        })
    };
    TcpProxy {
        stat_prefix: clusters[0].0.into(),
        cluster_specifier: Some(cluster_specifier),
        // istiod's default idle timeout: accepted and ignored.
        idle_timeout: Some(dur(3600, 0)),
        ..Default::default()
    }
}

/// istiod's outbound listener on a service's address `ip:port` (`10.96.0.20_5432`,
/// `bind_to_port: false`), with a chain per `(server_names, tcp_proxy)`.
fn vip_listener(ip: &str, port: u16, chains: Vec<(Vec<&str>, TcpProxy)>) -> Listener {
    use envoy_types::pb::envoy::config::core::v3::address;
    use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch};
    let mut l = fixtures::listener(port, "unused");
    l.name = format!("{ip}_{port}");
    if let Some(address::Address::SocketAddress(s)) =
        l.address.as_mut().and_then(|a| a.address.as_mut())
    {
        s.address = ip.into();
    }
    l.bind_to_port = Some(BoolValue { value: false });
    l.filter_chains = chains
        .into_iter()
        .map(|(names, proxy)| FilterChain {
            filter_chain_match: (!names.is_empty()).then(|| FilterChainMatch {
                server_names: names.iter().map(|n| (*n).to_owned()).collect(),
                transport_protocol: "tls".into(),
                ..Default::default()
            }),
            filters: vec![Filter {
                name: "envoy.filters.network.tcp_proxy".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack(&proxy))),
            }],
            ..Default::default()
        })
        .collect();
    l
}

/// The snapshot of `listeners` with an EDS cluster (no endpoints) of each of `clusters`.
fn assemble_tcp(listeners: &[Listener], clusters: &[&str]) -> MeshConfig {
    let listeners: Vec<XdsListener> = listeners.iter().map(listener_of).collect();
    let clusters: Vec<XdsCluster> = clusters
        .iter()
        .map(
            |c| match decode(ResourceType::Cluster, &pack(&fixtures::eds_cluster(c))).unwrap() {
                Decoded::Cluster(c) => *c,
                other => panic!("{other:?}"),
            },
        )
        .collect();
    let mut res = Resources::default();
    for l in &listeners {
        res.listeners.insert(&l.name, l);
    }
    for c in &clusters {
        res.clusters.insert(c.cluster.name.as_str(), c);
    }
    assemble(&res, &Workload::default())
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

#[test]
fn a_tcp_listener_on_a_service_address_gives_the_service_that_address() {
    let vip = vip_listener(
        "10.96.0.20",
        5432,
        vec![(vec![], tcp_proxy_to(&[(DB_OWN, 1)]))],
    );
    let x = listener_of(&vip);
    assert_eq!(x.address, Some("10.96.0.20".parse().unwrap()));
    assert_eq!(x.tcp_chains.len(), 1);
    // The same chain on every address (istiod's `0.0.0.0_5432` for a headless service)
    // names no address.
    let mut any = vip.clone();
    any.name = "0.0.0.0_5432".into();
    any.address = fixtures::listener(5432, "unused").address;
    assert_eq!(listener_of(&any).address, None);

    let cfg = assemble_tcp(&[vip, any], &[DB_OWN, DB_V1]);
    assert_eq!(
        cfg.service(DB).unwrap().addresses,
        vec![net("10.96.0.20/32")]
    );
    assert!(cfg.tcp_routes.is_empty(), "{:?}", cfg.tcp_routes);
    // The TCP forwarder now finds the service of a connection to its address: its own
    // cluster (mTLS, load balancing), not a passthrough.
    let found = mesh_tower::tcp::cluster_for(&cfg, "10.96.0.20:5432".parse().unwrap());
    assert_eq!(found.unwrap().name.as_str(), DB_OWN);
    assert!(mesh_tower::tcp::cluster_for(&cfg, "10.96.0.21:5432".parse().unwrap()).is_none());
}

#[test]
fn weighted_clusters_of_a_tcp_listener_are_the_service_port_s_tcp_route() {
    let vip = vip_listener(
        "10.96.0.20",
        5432,
        vec![(vec![], tcp_proxy_to(&[(DB_V1, 80), (DB_V2, 20)]))],
    );
    let cfg = assemble_tcp(&[vip], &[DB_OWN, DB_V1, DB_V2]);
    assert_eq!(
        cfg.service(DB).unwrap().addresses,
        vec![net("10.96.0.20/32")]
    );
    let own = mesh_core::model::ClusterName::new(DB_OWN);
    assert_eq!(
        cfg.tcp_routes.get(&own).unwrap(),
        &vec![TcpRoute {
            name: "10.96.0.20_5432.filter_chains[0]".into(),
            matches: vec![TcpRouteMatch {
                port: Some(5432),
                ..TcpRouteMatch::default()
            }],
            destinations: vec![
                TcpWeightedCluster {
                    cluster: mesh_core::model::ClusterName::new(DB_V1),
                    weight: 80,
                },
                TcpWeightedCluster {
                    cluster: mesh_core::model::ClusterName::new(DB_V2),
                    weight: 20,
                },
            ],
        }]
    );
    assert_eq!(cfg.tcp_routes.len(), 1);
}

#[test]
fn server_names_chains_of_a_tcp_listener_are_sni_routes_ahead_of_the_rest() {
    const TLS: &str = "tls.default.svc.cluster.local";
    const TLS_OWN: &str = "outbound|443||tls.default.svc.cluster.local";
    const A: &str = "outbound|443||a.example.com";
    // The default chain first, as a chain without a match can come in any place: the chain
    // with server names still routes first, and the default (the own cluster) is no route.
    let vip = vip_listener(
        "10.96.0.30",
        443,
        vec![
            (vec![], tcp_proxy_to(&[(TLS_OWN, 1)])),
            (vec!["a.example.com"], tcp_proxy_to(&[(A, 1)])),
        ],
    );
    let cfg = assemble_tcp(&[vip], &[TLS_OWN, A]);
    assert_eq!(
        cfg.service(TLS).unwrap().addresses,
        vec![net("10.96.0.30/32")]
    );
    assert!(
        cfg.service("a.example.com").unwrap().addresses.is_empty(),
        "the address is the listener's owner's only"
    );
    let routes = cfg
        .tcp_routes
        .get(&mesh_core::model::ClusterName::new(TLS_OWN))
        .unwrap();
    assert_eq!(
        routes,
        &vec![TcpRoute {
            name: "10.96.0.30_443.filter_chains[1]".into(),
            matches: vec![TcpRouteMatch {
                sni_hosts: vec!["a.example.com".into()],
                port: Some(443),
                ..TcpRouteMatch::default()
            }],
            destinations: vec![TcpWeightedCluster {
                cluster: mesh_core::model::ClusterName::new(A),
                weight: 1,
            }],
        }]
    );
    let w = Workload::default();
    let dst = "10.96.0.30:443".parse().unwrap();
    assert!(routes[0].needs_sni());
    assert!(routes[0].matches(dst, Some("a.example.com"), &w));
    assert!(!routes[0].matches(dst, Some("b.example.com"), &w));
}

#[test]
fn tcp_proxy_settings_the_forwarder_cannot_honour_are_nacked_with_their_path() {
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TunnelingConfig;
    let mut proxy = tcp_proxy_to(&[(DB_OWN, 1)]);
    // Benign, as istiod may set them: accepted.
    proxy.max_connect_attempts = Some(UInt32Value { value: 2 });
    proxy.hash_policy = vec![Default::default()];
    // istiod's DestinationRule `connectionPool.tcp.maxConnectionDuration`.
    proxy.max_downstream_connection_duration = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 3600,
        nanos: 0,
    });
    listener_of(&vip_listener(
        "10.96.0.20",
        5432,
        vec![(vec![], proxy.clone())],
    ));

    proxy.tunneling_config = Some(TunnelingConfig {
        hostname: "db:5432".into(),
        ..Default::default()
    });
    let l = vip_listener("10.96.0.20", 5432, vec![(vec![], proxy)]);
    assert_eq!(
        err(ResourceType::Listener, pack(&l)),
        "Listener 10.96.0.20_5432: filter_chains[0].filters[0].typed_config.tunneling_config: \
         is not supported by the TCP forwarder"
    );
    let mut weightless = tcp_proxy_to(&[(DB_V1, 80), (DB_V2, 20)]);
    if let Some(
        envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier::WeightedClusters(w),
    ) = &mut weightless.cluster_specifier
    {
        w.clusters[1].weight = 0;
    }
    let l = vip_listener("10.96.0.20", 5432, vec![(vec![], weightless)]);
    assert_eq!(
        err(ResourceType::Listener, pack(&l)),
        "Listener 10.96.0.20_5432: filter_chains[0].filters[0].typed_config.\
         weighted_clusters.clusters[1].weight: must be at least 1"
    );
}
