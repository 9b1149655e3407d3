//! The shipped deployment files stay consistent with the gateway: the config inside the
//! Kubernetes ConfigMap validates, and the manifests point at the ports and paths it serves.

use serde::Deserialize;

fn manifests(file: &str) -> Vec<serde_yaml_ng::Value> {
    let path = format!("{}/deploy/kubernetes/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_yaml_ng::Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

#[test]
fn configmap_config_validates() {
    let cm = &manifests("configmap.yaml")[0];
    assert_eq!(cm["kind"], "ConfigMap");
    let yaml = cm["data"]["splitgate.yaml"]
        .as_str()
        .expect("the ConfigMap carries splitgate.yaml");
    let config = splitgate::config::from_str(yaml, "configmap").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.readiness_addr.port(), 15021);
    assert_eq!(config.metrics_addr.port(), 15090);
    assert!(
        config.raw.admin.token_file.is_some(),
        "an admin API open to the cluster must require a token"
    );
}

#[test]
fn deployment_probes_and_mounts_match_the_config() {
    let dep = &manifests("deployment.yaml")[0];
    let pod = &dep["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15021);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        "15090"
    );
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let config_mount = mounts
        .iter()
        .find(|m| m["name"] == "config")
        .expect("the config volume is mounted");
    assert!(
        config_mount.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    assert_eq!(c["args"][2], "/etc/splitgate/splitgate.yaml");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
}
