//! The node identity sent to the control plane, in the form istiod expects of a sidecar.

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use mesh_core::model::Workload;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Who this workload is, as istiod identifies a sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The pod's IP address.
    pub ip: IpAddr,
    /// The pod's name.
    pub pod: String,
    /// The namespace.
    pub namespace: String,
    /// The DNS domain of the cluster (`cluster.local`).
    pub cluster_domain: String,
    /// The workload's labels.
    pub labels: BTreeMap<String, String>,
    /// The service account.
    pub service_account: String,
    /// The cluster id istiod knows this workload's cluster by (`Kubernetes` by default).
    pub cluster_id: String,
    /// The workload's name (`WORKLOAD_NAME`), empty when unknown.
    pub workload_name: String,
}

impl NodeIdentity {
    /// The identity of `workload` running as `pod` at `ip`.
    pub fn from_workload(workload: &Workload, ip: IpAddr, pod: impl Into<String>) -> Self {
        Self {
            ip,
            pod: pod.into(),
            namespace: workload.namespace.clone(),
            cluster_domain: workload.cluster_domain.clone(),
            labels: workload.labels.clone(),
            service_account: workload.service_account.clone(),
            cluster_id: workload.cluster_id.clone(),
            workload_name: workload.name().to_owned(),
        }
    }

    /// Istio's node id: `sidecar~IP~POD.NS~NS.svc.DOMAIN`.
    ///
    /// ```
    /// use mesh_xds_client::node::NodeIdentity;
    /// use mesh_core::model::Workload;
    /// let id = NodeIdentity::from_workload(&Workload::default(), "10.0.0.7".parse().unwrap(), "reviews-v1-abc");
    /// assert_eq!(id.node_id(), "sidecar~10.0.0.7~reviews-v1-abc.default~default.svc.cluster.local");
    /// ```
    pub fn node_id(&self) -> String {
        format!(
            "sidecar~{}~{}.{}~{}.svc.{}",
            self.ip, self.pod, self.namespace, self.namespace, self.cluster_domain
        )
    }

    /// The Envoy `Node`: the id, the cluster (`APP.NS`, as istio-agent sets it) and the
    /// metadata istiod reads (`NAMESPACE`, `LABELS`, `SERVICE_ACCOUNT`, `NAME`, `CLUSTER_ID`,
    /// `INSTANCE_IPS`, and `WORKLOAD_NAME` when known).
    pub fn to_node(&self) -> Node {
        let s = |v: &str| Value {
            kind: Some(Kind::StringValue(v.to_owned())),
        };
        let labels = Struct {
            fields: self.labels.iter().map(|(k, v)| (k.clone(), s(v))).collect(),
        };
        let mut fields = std::collections::HashMap::new();
        fields.insert("NAMESPACE".to_owned(), s(&self.namespace));
        fields.insert("NAME".to_owned(), s(&self.pod));
        fields.insert("SERVICE_ACCOUNT".to_owned(), s(&self.service_account));
        fields.insert("CLUSTER_ID".to_owned(), s(&self.cluster_id));
        fields.insert("INSTANCE_IPS".to_owned(), s(&self.ip.to_string()));
        if !self.workload_name.is_empty() {
            fields.insert("WORKLOAD_NAME".to_owned(), s(&self.workload_name));
        }
        fields.insert(
            "LABELS".to_owned(),
            Value {
                kind: Some(Kind::StructValue(labels)),
            },
        );
        let app = self
            .labels
            .get("app")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .cloned()
            .unwrap_or_else(|| self.pod.clone());
        Node {
            id: self.node_id(),
            cluster: format!("{app}.{}", self.namespace),
            metadata: Some(Struct { fields }),
            user_agent_name: "mesh".to_owned(),
            ..Default::default()
        }
    }
}
