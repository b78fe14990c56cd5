//! Writes the trimmed descriptor set the `json` feature embeds
//! (`mesh-xds-client/descriptors/envoy.bin`) from the full set envoy-types ships
//! (`envoy-types-*/src/generated/types.bin`). Run it with `descriptors/generate.sh`.
//!
//! The set keeps the files that define the types the mesh reads from Envoy JSON (the five xDS
//! resources and the extensions found in their `typed_config`s) and, transitively, the files
//! defining the types of their fields. Everything JSON does not need is dropped: source
//! info, options (validation rules, annotations; a map entry's `map_entry` flag is kept) and
//! the imports that only carried options.
//!
//! ```text
//! cargo run -p mesh-xds-client --features json --example envoy_descriptors -- TYPES_BIN OUT
//! ```

use prost::Message;
use prost_reflect::DescriptorPool;
use prost_reflect::prost_types::{
    DescriptorProto, FileDescriptorProto, FileDescriptorSet, MessageOptions,
};
use std::collections::{BTreeMap, BTreeSet};

/// The message types decoded from JSON, and the extensions they carry in `typed_config`.
const ROOTS: &[&str] = &[
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.extensions.transport_sockets.tls.v3.Secret",
    "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
    "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.http.rbac.v3.RBAC",
    "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
    "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    "envoy.extensions.access_loggers.file.v3.FileAccessLog",
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate",
    "envoy.extensions.filters.network.rbac.v3.RBAC",
    "envoy.extensions.filters.listener.original_dst.v3.OriginalDst",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "google.protobuf.Struct",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(input), Some(output)) = (args.next(), args.next()) else {
        return Err("usage: envoy_descriptors TYPES_BIN OUT".into());
    };
    let full = FileDescriptorSet::decode(std::fs::read(&input)?.as_slice())?;
    let files: BTreeMap<String, FileDescriptorProto> = full
        .file
        .into_iter()
        .map(|f| (f.name().to_owned(), f))
        .collect();

    // Which file defines each type (".pkg.Name").
    let mut defined_in: BTreeMap<String, String> = BTreeMap::new();
    for (name, file) in &files {
        let prefix = if file.package().is_empty() {
            String::new()
        } else {
            format!(".{}", file.package())
        };
        for m in &file.message_type {
            index_message(m, &prefix, name, &mut defined_in);
        }
        for e in &file.enum_type {
            defined_in.insert(format!("{prefix}.{}", e.name()), name.clone());
        }
    }

    // The files each file needs for its fields' types.
    let needs = |file: &FileDescriptorProto| -> BTreeSet<String> {
        let mut refs = BTreeSet::new();
        for m in &file.message_type {
            type_refs(m, &mut refs);
        }
        refs.iter()
            .filter_map(|t| defined_in.get(t).cloned())
            .filter(|f| f != file.name())
            .collect()
    };

    let mut keep: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = Vec::new();
    for root in ROOTS {
        let file = defined_in
            .get(&format!(".{root}"))
            .ok_or_else(|| format!("{root} is not in {input}"))?;
        todo.push(file.clone());
    }
    while let Some(name) = todo.pop() {
        if keep.insert(name.clone()) {
            todo.extend(needs(&files[&name]));
        }
    }

    let mut out = FileDescriptorSet::default();
    // Dependencies before dependents, as protoc orders a set.
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut order: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        deps: &dyn Fn(&str) -> BTreeSet<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if done.insert(name.to_owned()) {
            for d in deps(name) {
                visit(&d, deps, done, order);
            }
            order.push(name.to_owned());
        }
    }
    let deps_of = |n: &str| needs(&files[n]);
    for name in &keep {
        visit(name, &deps_of, &mut done, &mut order);
    }
    for name in order {
        let mut file = files[&name].clone();
        let deps = needs(&file);
        file.dependency.retain(|d| deps.contains(d));
        file.public_dependency.clear();
        file.weak_dependency.clear();
        file.options = None;
        file.source_code_info = None;
        file.extension.clear();
        file.service.clear();
        for m in &mut file.message_type {
            strip(m);
        }
        for e in &mut file.enum_type {
            e.options = None;
            for v in &mut e.value {
                v.options = None;
            }
        }
        out.file.push(file);
    }
    let bytes = out.encode_to_vec();
    // The set must load on its own, with every root.
    let pool = DescriptorPool::decode(bytes.as_slice())?;
    for root in ROOTS {
        pool.get_message_by_name(root)
            .ok_or_else(|| format!("{root} missing from the trimmed set"))?;
    }
    std::fs::write(&output, &bytes)?;
    eprintln!(
        "{output}: {} files, {} bytes (from {} files)",
        out.file.len(),
        bytes.len(),
        files.len()
    );
    Ok(())
}

fn index_message(
    m: &DescriptorProto,
    prefix: &str,
    file: &str,
    out: &mut BTreeMap<String, String>,
) {
    let full = format!("{prefix}.{}", m.name());
    for n in &m.nested_type {
        index_message(n, &full, file, out);
    }
    for e in &m.enum_type {
        out.insert(format!("{full}.{}", e.name()), file.to_owned());
    }
    out.insert(full, file.to_owned());
}

fn type_refs(m: &DescriptorProto, out: &mut BTreeSet<String>) {
    for f in &m.field {
        if !f.type_name().is_empty() {
            out.insert(f.type_name().to_owned());
        }
    }
    for n in &m.nested_type {
        type_refs(n, out);
    }
}

fn strip(m: &mut DescriptorProto) {
    let map_entry = m.options.as_ref().is_some_and(|o| o.map_entry());
    m.options = map_entry.then(|| MessageOptions {
        map_entry: Some(true),
        ..Default::default()
    });
    m.extension.clear();
    for f in &mut m.field {
        f.options = None;
    }
    for o in &mut m.oneof_decl {
        o.options = None;
    }
    for e in &mut m.enum_type {
        e.options = None;
        for v in &mut e.value {
            v.options = None;
        }
    }
    for n in &mut m.nested_type {
        strip(n);
    }
}
