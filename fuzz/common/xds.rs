//! The xds fuzz target's input format and runner, shared with the corpus replay test
//! (`mesh-xds-client/tests/fuzz_corpus.rs` includes this file by path).
//!
//! An input is one byte choosing the resource type (its value modulo 5, in
//! [`ResourceType::ALL`]'s order: Cluster, ClusterLoadAssignment, Listener,
//! RouteConfiguration, Secret), then the protobuf bytes of one resource of that type. The
//! resource is decoded, checked and translated as an xDS response's resource would be; when
//! accepted it is assembled into a snapshot on its own. Neither step may panic.

use envoy_types::pb::google::protobuf::Any;
use mesh_core::model::{MeshConfig, Workload};
use mesh_xds_client::resource::ResourceType;
use mesh_xds_client::translate::{self, Decoded, InvalidResource, Resources};

/// The outcome of one input: `None` when it is empty.
pub type Outcome = Option<Result<MeshConfig, InvalidResource>>;

/// Splits `data` into the resource type and its bytes, wrapped as an xDS response would carry
/// them.
pub fn resource(data: &[u8]) -> Option<(ResourceType, Any)> {
    let (&first, rest) = data.split_first()?;
    let kind = ResourceType::ALL[usize::from(first) % ResourceType::ALL.len()];
    let any = Any {
        type_url: kind.type_url().to_owned(),
        value: rest.to_vec(),
    };
    Some((kind, any))
}

/// Encodes a resource as an input of this format (for seeds; the replay test writes them).
#[allow(dead_code)]
pub fn encode(kind: ResourceType, bytes: &[u8]) -> Vec<u8> {
    let index = ResourceType::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(bytes.len() + 1);
    // Five types: the index fits a byte.
    out.push(u8::try_from(index).unwrap_or_default());
    out.extend_from_slice(bytes);
    out
}

/// Decodes, translates and assembles one input.
pub fn run(data: &[u8]) -> Outcome {
    let (kind, any) = resource(data)?;
    let decoded = match translate::decode(kind, &any) {
        Ok(d) => d,
        Err(e) => {
            // The error must render (it becomes a NACK's error_detail).
            let _ = e.to_string();
            return Some(Err(e));
        }
    };
    let _ = decoded.references();
    let mut resources = Resources::default();
    match &decoded {
        Decoded::Listener(l) => {
            resources.listeners.insert(&l.name, l);
        }
        Decoded::RouteConfiguration(r) => {
            resources.routes.insert(&r.name, r);
        }
        Decoded::Cluster(c) => {
            resources.clusters.insert(c.cluster.name.as_str(), c);
        }
        Decoded::ClusterLoadAssignment(e) => {
            resources.endpoints.insert(&e.cluster_name, e);
        }
        Decoded::Secret(_) => {}
    }
    Some(Ok(translate::assemble(&resources, &Workload::default())))
}
