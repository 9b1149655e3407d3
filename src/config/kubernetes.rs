//! Checks the `kubernetes` section (SPEC §6).

use super::model::{RawKubernetes, RawSticky};
use super::FieldError;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where and what to watch, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSpec {
    /// The Gateway's namespace.
    pub gateway_namespace: String,
    /// The Gateway's name.
    pub gateway_name: String,
    /// Namespaces watched; empty: all.
    pub namespaces: Vec<String>,
    /// An explicit kubeconfig file.
    pub kubeconfig: Option<PathBuf>,
    /// The cluster's DNS domain (`cluster.local`).
    pub cluster_domain: String,
    /// `namespace/name` of a VirtualService → how its weighted rules are sticky.
    pub sticky: BTreeMap<String, RawSticky>,
}

/// Whether `s` is a DNS label as Kubernetes names namespaces (RFC 1123: at most 63 lowercase
/// letters, digits and dashes, starting and ending alphanumeric).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a DNS subdomain as Kubernetes names most objects (labels joined by dots, at
/// most 253 characters).
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// The section, or every problem with it.
pub fn kubernetes(raw: &RawKubernetes) -> Result<KubernetesSpec, Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut fail = |field: &str, message: String| {
        errs.push(FieldError {
            path: format!("kubernetes.{field}"),
            message,
        })
    };
    let (gateway_namespace, gateway_name) = match raw.gateway.split_once('/') {
        Some((ns, name)) if is_dns_label(ns) && is_dns_subdomain(name) => {
            (ns.to_string(), name.to_string())
        }
        _ => {
            fail(
                "gateway",
                format!(
                    "must be namespace/name, as in istio-system/splitgate, got {:?}",
                    raw.gateway
                ),
            );
            Default::default()
        }
    };
    for (i, ns) in raw.namespaces.iter().enumerate() {
        if !is_dns_label(ns) {
            fail(
                &format!("namespaces[{i}]"),
                format!("{ns:?} is not a namespace name (lowercase letters, digits, dashes)"),
            );
        }
    }
    let domain = raw.cluster_domain.trim_end_matches('.');
    if !is_dns_subdomain(domain) {
        fail(
            "cluster_domain",
            format!("{:?} is not a DNS domain", raw.cluster_domain),
        );
    }
    for key in raw.sticky.keys() {
        let ok = key
            .split_once('/')
            .is_some_and(|(ns, name)| is_dns_label(ns) && is_dns_subdomain(name));
        if !ok {
            fail(
                &format!("sticky[{key:?}]"),
                "name a VirtualService as namespace/name".into(),
            );
        }
    }
    if raw.kubeconfig.as_deref() == Some("") {
        fail(
            "kubeconfig",
            "must not be empty (leave it out for the default)".into(),
        );
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(KubernetesSpec {
        gateway_namespace,
        gateway_name,
        namespaces: raw.namespaces.clone(),
        kubeconfig: raw.kubeconfig.as_ref().map(PathBuf::from),
        cluster_domain: domain.to_string(),
        sticky: raw.sticky.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(gateway: &str) -> RawKubernetes {
        RawKubernetes {
            gateway: gateway.into(),
            namespaces: vec![],
            kubeconfig: None,
            cluster_domain: "cluster.local".into(),
            sticky: BTreeMap::new(),
        }
    }

    #[test]
    fn the_gateway_is_namespace_slash_name() {
        let k = kubernetes(&raw("istio-system/splitgate")).unwrap();
        assert_eq!(
            (k.gateway_namespace.as_str(), k.gateway_name.as_str()),
            ("istio-system", "splitgate")
        );
        for bad in ["splitgate", "/x", "ns/", "Istio/x", "a/b/c"] {
            let e = kubernetes(&raw(bad)).unwrap_err();
            assert_eq!(e[0].path, "kubernetes.gateway", "{bad}");
            assert!(e[0].message.contains("namespace/name"), "{bad}: {e:?}");
        }
    }

    #[test]
    fn namespaces_and_domain_are_dns_names() {
        let mut r = raw("a/b");
        r.namespaces = vec!["good".into(), "Bad_ns".into()];
        r.cluster_domain = "cluster..local".into();
        let e = kubernetes(&r).unwrap_err();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["kubernetes.namespaces[1]", "kubernetes.cluster_domain"]
        );
    }
}
