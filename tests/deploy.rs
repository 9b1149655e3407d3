//! The shipped deployment files stay consistent with the gateway and with each other: the
//! configs inside the ConfigMaps validate, the manifests point at the ports and paths the
//! config serves, RBAC grants reads of the watched kinds and nothing more, shutdown fits in
//! the grace period, and the examples bind to the gateway the config names. No cluster is
//! needed: field names of core objects are checked against the Kubernetes API types.

use serde::Deserialize;
use serde_json::Value;
use splitgate::config::kubernetes::KubernetesSpec;
use splitgate::config::Config;
use splitgate::kubernetes::istio::VirtualServiceSpec;
use splitgate::kubernetes::translate::{names_gateway, service_of};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every document of a file under deploy/kubernetes/, as JSON (what the API server sees).
fn manifests(file: &str) -> Vec<Value> {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let yaml =
                serde_yaml_ng::Value::deserialize(doc).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{path:?}: {e}"))
        })
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The files `kubectl apply -f deploy/kubernetes/` reads: the top level only.
fn install_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    files
}

fn install() -> Vec<Value> {
    install_files().iter().flat_map(|f| manifests(f)).collect()
}

/// The one object of `kind` named `name` among `docs`.
fn the<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "expected one {kind} {name:?}");
    found[0]
}

/// The one object of `kind` among `docs`.
fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected a list, got {v}"))
        .iter()
        .map(|s| str_of(s, "list item"))
        .collect()
}

fn config_of(file: &str) -> Config {
    let docs = manifests(file);
    let cm = only(&docs, "ConfigMap");
    let yaml = str_of(
        &cm["data"]["splitgate.yaml"],
        "the ConfigMap's splitgate.yaml",
    );
    splitgate::config::from_str(yaml, file).unwrap_or_else(|e| panic!("{e}"))
}

fn kube_config() -> Config {
    config_of("configmap.yaml")
}

fn kube_spec() -> KubernetesSpec {
    kube_config()
        .kubernetes
        .expect("configmap.yaml has a kubernetes section")
}

fn deployment() -> Value {
    the(&manifests("deployment.yaml"), "Deployment", "splitgate").clone()
}

fn container(dep: &Value) -> &Value {
    &dep["spec"]["template"]["spec"]["containers"][0]
}

/// Whether `selector` (matchLabels) picks pods with `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(want) = selector.as_object() else {
        return false;
    };
    !want.is_empty() && want.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kube_mode_configmap_validates_and_names_the_gateway() {
    let config = kube_config();
    let spec = config
        .kubernetes
        .as_ref()
        .expect("the shipped ConfigMap runs in Kubernetes mode");
    assert_eq!(
        (spec.gateway_namespace.as_str(), spec.gateway_name.as_str()),
        ("istio-system", "splitgate")
    );
    assert!(
        spec.namespaces.is_empty(),
        "the ClusterRole is sized for watching every namespace"
    );
    assert_eq!(
        spec.kubeconfig, None,
        "in a pod, the ServiceAccount is the credential"
    );
    assert!(config.raw.routes.is_empty() && config.raw.services.is_empty());
    assert_eq!(config.readiness_addr.port(), 15021);
    assert_eq!(config.metrics_addr.port(), 15090);
    assert!(
        config.raw.admin.token_file.is_some(),
        "an admin API open to the cluster must require a token"
    );
}

#[test]
fn file_mode_configmap_validates_and_swaps_in_for_the_kube_mode_one() {
    let config = config_of("file-mode/configmap.yaml");
    assert!(config.kubernetes.is_none());
    assert!(!config.raw.routes.is_empty());
    assert_eq!(config.readiness_addr, kube_config().readiness_addr);
    assert_eq!(config.metrics_addr.port(), 15090);
    assert!(
        config.raw.admin.token_file.is_some(),
        "an admin API open to the cluster must require a token"
    );
    // The Deployment mounts the ConfigMap by name: both files must carry the same one.
    let name = |file: &str| only(&manifests(file), "ConfigMap")["metadata"].clone();
    assert_eq!(name("file-mode/configmap.yaml"), name("configmap.yaml"));
}

/// Deserializes `doc` into the Kubernetes API type and back: a misspelled or misplaced field
/// (which the API types, like the API server, do not know) is lost on the way and shows.
fn round_trip<T>(doc: &Value)
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{} {}: a field the Kubernetes API does not define (left: what the API keeps)",
        doc["kind"], doc["metadata"]["name"]
    );
}

#[test]
fn every_core_object_uses_only_fields_the_kubernetes_api_defines() {
    use k8s_openapi::api::{apps, core, policy, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;
    let files = install_files().into_iter().chain(
        [
            "file-mode/configmap.yaml",
            "crds/crds.yaml",
            "examples/argo-rollouts.yaml",
            "examples/flagger.yaml",
        ]
        .map(String::from),
    );
    let mut checked = BTreeSet::new();
    for file in files {
        for doc in manifests(&file) {
            let kind = (
                str_of(&doc["apiVersion"], "apiVersion"),
                str_of(&doc["kind"], "kind"),
            );
            match kind {
                ("v1", "ConfigMap") => round_trip::<core::v1::ConfigMap>(&doc),
                ("v1", "Namespace") => round_trip::<core::v1::Namespace>(&doc),
                ("v1", "Secret") => round_trip::<core::v1::Secret>(&doc),
                ("v1", "Service") => round_trip::<core::v1::Service>(&doc),
                ("v1", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(&doc),
                ("apps/v1", "Deployment") => round_trip::<apps::v1::Deployment>(&doc),
                ("networking.k8s.io/v1", "NetworkPolicy") => {
                    round_trip::<k8s_openapi::api::networking::v1::NetworkPolicy>(&doc)
                }
                ("policy/v1", "PodDisruptionBudget") => {
                    round_trip::<policy::v1::PodDisruptionBudget>(&doc)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    round_trip::<rbac::v1::ClusterRole>(&doc)
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    round_trip::<rbac::v1::ClusterRoleBinding>(&doc)
                }
                ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                    round_trip::<apiext::CustomResourceDefinition>(&doc)
                }
                // Custom resources: checked for what matters in the tests below.
                (
                    "networking.istio.io/v1alpha3"
                    | "networking.istio.io/v1beta1"
                    | "networking.istio.io/v1",
                    "VirtualService",
                )
                | ("argoproj.io/v1alpha1", "Rollout" | "AnalysisTemplate")
                | ("flagger.app/v1beta1", "Canary") => continue,
                other => panic!("{file}: no check for {other:?}; add one"),
            }
            checked.insert(doc["kind"].as_str().unwrap().to_string());
        }
    }
    for kind in [
        "ConfigMap",
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    ] {
        assert!(checked.contains(kind), "no {kind} was checked");
    }
}

#[test]
fn the_install_holds_no_crds_and_no_namespaces() {
    // `kubectl apply -f deploy/kubernetes/` must not replace Istio's CRDs where Istio runs, and
    // `kubectl delete -f deploy/kubernetes/` must not take istio-system with it.
    for doc in install() {
        assert_ne!(doc["kind"], "CustomResourceDefinition", "{doc}");
        assert_ne!(doc["kind"], "Namespace", "{doc}");
    }
    assert!(
        !install_files().iter().any(|f| f.contains("crd")),
        "{:?}",
        install_files()
    );
}

#[test]
fn the_cluster_role_grants_only_reads_of_the_watched_kinds() {
    let roles: Vec<Value> = install()
        .into_iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    assert_eq!(roles.len(), 1, "one role for the gateway");
    let role = &roles[0];
    assert_eq!(role, only(&manifests("rbac.yaml"), "ClusterRole"));
    assert!(
        role.get("aggregationRule").is_none(),
        "an aggregated role takes its rules from elsewhere"
    );
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let keys: BTreeSet<&str> = rule
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "no resourceNames or nonResourceURLs: {rule}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    assert!(
                        !group.contains('*') && !resource.contains('*') && !verb.contains('*'),
                        "wildcard in {rule}"
                    );
                    assert!(
                        ["get", "list", "watch"].contains(&verb),
                        "the gateway only reads; {verb:?} in {rule}"
                    );
                    assert!(
                        !resource.contains('/'),
                        "no subresources: {resource:?} in {rule}"
                    );
                    granted.insert((group, resource, verb));
                }
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for (group, resource) in [
        ("networking.istio.io", "virtualservices"),
        ("networking.istio.io", "destinationrules"),
        ("", "services"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        wanted.insert((group, resource, "list"));
        wanted.insert((group, resource, "watch"));
    }
    // `splitgate verify` reads one VirtualService's generation.
    wanted.insert(("networking.istio.io", "virtualservices", "get"));
    assert_eq!(granted, wanted);
}

#[test]
fn the_role_is_bound_to_the_deployments_service_account() {
    let rbac = manifests("rbac.yaml");
    let role = only(&rbac, "ClusterRole");
    let binding = only(&rbac, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let dep = deployment();
    let pod = &dep["spec"]["template"]["spec"];
    let account = str_of(&pod["serviceAccountName"], "serviceAccountName");
    assert_ne!(
        pod["automountServiceAccountToken"], false,
        "Kubernetes mode reads the API with the ServiceAccount token"
    );
    the(&manifests("deployment.yaml"), "ServiceAccount", account);
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], account);
    assert_eq!(subjects[0]["namespace"], dep["metadata"]["namespace"]);
}

#[test]
fn crds_serve_three_versions_store_one_and_keep_unknown_fields() {
    let docs = manifests("crds/crds.yaml");
    let mut kinds = BTreeSet::new();
    for crd in &docs {
        assert_eq!(crd["kind"], "CustomResourceDefinition");
        let spec = &crd["spec"];
        let names = &spec["names"];
        assert_eq!(spec["group"], "networking.istio.io");
        assert_eq!(spec["scope"], "Namespaced");
        assert_eq!(
            crd["metadata"]["name"],
            format!("{}.networking.istio.io", str_of(&names["plural"], "plural")),
            "a CRD's name is plural.group"
        );
        let kind = str_of(&names["kind"], "kind");
        let short = match kind {
            "VirtualService" => "vs",
            "DestinationRule" => "dr",
            other => panic!("unexpected CRD {other}"),
        };
        assert_eq!(strings(&names["shortNames"]), [short]);
        kinds.insert(kind);

        let versions = spec["versions"].as_array().unwrap();
        let served: BTreeSet<&str> = versions
            .iter()
            .filter(|v| v["served"] == true)
            .map(|v| str_of(&v["name"], "version"))
            .collect();
        assert_eq!(
            served,
            BTreeSet::from(["v1alpha3", "v1beta1", "v1"]),
            "{kind}"
        );
        assert_eq!(versions.len(), 3, "{kind}");
        let stored: Vec<&Value> = versions.iter().filter(|v| v["storage"] == true).collect();
        assert_eq!(stored.len(), 1, "{kind}: exactly one storage version");
        for v in versions {
            let schema = &v["schema"]["openAPIV3Schema"];
            assert_eq!(schema["type"], "object", "{kind} {}", v["name"]);
            let spec_schema = &schema["properties"]["spec"];
            assert_eq!(spec_schema["type"], "object", "{kind} {}", v["name"]);
            assert_eq!(
                spec_schema["x-kubernetes-preserve-unknown-fields"], true,
                "{kind} {}: the API server must keep every spec field",
                v["name"]
            );
            assert!(
                v.get("subresources").is_none(),
                "{kind} {}: no status subresource is needed",
                v["name"]
            );
        }
    }
    assert_eq!(kinds, BTreeSet::from(["DestinationRule", "VirtualService"]));
}

#[test]
fn deployment_probes_and_mounts_match_the_config() {
    let config = kube_config();
    let dep = deployment();
    let pod = &dep["spec"]["template"];
    let c = container(&dep);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(
        c["readinessProbe"]["httpGet"]["port"],
        config.readiness_addr.port()
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        config.metrics_addr.port().to_string()
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/path"],
        "/stats/prometheus"
    );
    let mounts = c["volumeMounts"].as_array().unwrap();
    let config_mount = mounts
        .iter()
        .find(|m| m["name"] == "config")
        .expect("the config volume is mounted");
    assert!(
        config_mount.get("subPath").is_none(),
        "a subPath mount never sees ConfigMap updates"
    );
    let mount_path = str_of(&config_mount["mountPath"], "mountPath");
    assert_eq!(c["args"][2], format!("{mount_path}/splitgate.yaml"));
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let config_volume = volumes.iter().find(|v| v["name"] == "config").unwrap();
    assert_eq!(
        config_volume["configMap"]["name"],
        only(&manifests("configmap.yaml"), "ConfigMap")["metadata"]["name"]
    );
    let token_dir = Path::new(config.raw.admin.token_file.as_deref().unwrap())
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        mounts.iter().any(|m| m["mountPath"] == token_dir.as_str()),
        "the admin token's directory {token_dir} is mounted"
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(dep["spec"]["replicas"].as_u64().unwrap() >= 2);
    // `run` refuses a state file whose directory is missing or read-only, and the root is
    // read-only: the directory must be a writable volume.
    let state_dir = Path::new(config.raw.admin.state_file.as_deref().unwrap())
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let state_mount = mounts
        .iter()
        .find(|m| m["mountPath"] == state_dir.as_str())
        .unwrap_or_else(|| panic!("the state file's directory {state_dir} is mounted"));
    assert_ne!(state_mount["readOnly"], true, "{state_mount}");
}

/// The label that lets a pod reach the admin API.
const ADMIN_CLIENT: (&str, &str) = ("splitgate.io/admin-client", "true");

#[test]
fn the_install_ships_no_secret_and_only_labelled_pods_reach_the_admin_port() {
    let docs = install();
    let secrets: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Secret").collect();
    assert!(
        secrets.is_empty(),
        "applying the install again would overwrite the operator's token: {secrets:?}"
    );

    let config = kube_config();
    let dep = deployment();
    let policy = only(&docs, "NetworkPolicy");
    assert_eq!(
        policy["metadata"]["namespace"],
        dep["metadata"]["namespace"]
    );
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &dep["spec"]["template"]["metadata"]["labels"]
    ));
    assert!(strings(&policy["spec"]["policyTypes"]).contains(&"Ingress"));
    let admin = u64::from(config.admin_addr.port());
    // Each rule: its ports, and whether it admits any source.
    let rules: Vec<(Vec<u64>, &Value)> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let ports = r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_u64().unwrap())
                .collect();
            (ports, &r["from"])
        })
        .collect();
    let open: BTreeSet<u64> = rules
        .iter()
        .filter(|(_, from)| from.is_null())
        .flat_map(|(ports, _)| ports.iter().copied())
        .collect();
    // Every port the pod serves but the admin API is open to all; the admin API is not.
    for p in c_ports(&dep) {
        assert_eq!(open.contains(&p), p != admin, "port {p}: open {open:?}");
    }
    let admin_from: Vec<&Value> = rules
        .iter()
        .filter(|(ports, _)| ports.contains(&admin))
        .map(|(_, from)| *from)
        .collect();
    assert!(!admin_from.is_empty(), "some pods may reach the admin API");
    for from in admin_from {
        for peer in from.as_array().unwrap() {
            let labels = &peer["podSelector"]["matchLabels"];
            assert_eq!(labels.as_object().map(|m| m.len()), Some(1), "{peer}");
            assert_eq!(labels[ADMIN_CLIENT.0], ADMIN_CLIENT.1, "{peer}");
            assert!(peer.get("ipBlock").is_none(), "{peer}");
        }
    }
}

/// The container ports of the Deployment's gateway container.
fn c_ports(dep: &Value) -> Vec<u64> {
    container(dep)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect()
}

/// How long `splitgate run` may take after SIGTERM with the shipped config: its drain delay
/// (still accepting) and then its timeout (requests in flight), rounded up.
fn drain_grace_seconds() -> u64 {
    let drain = kube_config().drain;
    (drain.delay + drain.timeout).as_secs_f64().ceil() as u64
}

#[test]
fn shutdown_fits_in_the_grace_period() {
    let dep = deployment();
    let c = container(&dep);
    let sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("a preStop sleep, so endpoints drop before draining starts");
    assert!(sleep >= 1, "a preStop sleep of {sleep} s waits for nothing");
    let drain = drain_grace_seconds();
    let grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds is set");
    assert!(
        grace > sleep + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {sleep} + drain delay and timeout {drain}"
    );
}

#[test]
fn the_metrics_identity_is_the_deployments() {
    let config = kube_config();
    let w = &config.raw.metrics.workload;
    let dep = deployment();
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert_eq!(dep["metadata"]["name"], w.name.as_str(), "source_workload");
    assert_eq!(
        dep["metadata"]["namespace"],
        w.namespace.as_str(),
        "source_workload_namespace"
    );
    assert_eq!(labels["app"], w.app.as_str(), "source_app");
    assert_eq!(labels["version"], w.version.as_str(), "source_version");
    // The gateway's namespace is the one its config names as the Gateway's.
    assert_eq!(dep["metadata"]["namespace"], kube_spec().gateway_namespace);
}

#[test]
fn the_pdb_selects_the_deployments_pods_and_lets_one_go_at_a_time() {
    let dep = deployment();
    let docs = manifests("pdb.yaml");
    let pdb = only(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["metadata"]["namespace"], dep["metadata"]["namespace"]);
    let selector = &pdb["spec"]["selector"];
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchLabels only: {selector}"
    );
    assert!(selects(
        &selector["matchLabels"],
        &dep["spec"]["template"]["metadata"]["labels"]
    ));
    assert_eq!(
        selector["matchLabels"], dep["spec"]["selector"]["matchLabels"],
        "the PDB counts exactly the Deployment's pods"
    );
    let replicas = dep["spec"]["replicas"].as_u64().unwrap();
    let spec = &pdb["spec"];
    match (spec.get("maxUnavailable"), spec.get("minAvailable")) {
        (Some(max), None) => assert_eq!(max, 1),
        (None, Some(min)) => assert!(min.as_u64().unwrap() < replicas),
        other => panic!("exactly one of maxUnavailable and minAvailable: {other:?}"),
    }
}

/// The Services of `docs` by name, in `namespace`.
fn service<'a>(docs: &'a [Value], namespace: &str, name: &str) -> &'a Value {
    let svc = the(docs, "Service", name);
    assert_eq!(svc["metadata"]["namespace"], namespace, "Service {name}");
    svc
}

/// Checks a VirtualService the gateway should serve, and returns the Services its
/// destinations name, as (namespace, name).
fn served_virtual_service(vs: &Value, spec: &KubernetesSpec) -> BTreeSet<(String, String)> {
    let ns = str_of(&vs["metadata"]["namespace"], "namespace");
    let parsed: VirtualServiceSpec = serde_json::from_value(vs["spec"].clone()).unwrap();
    assert!(
        parsed.gateways.iter().any(|g| names_gateway(g, ns, spec)),
        "VirtualService {}: spec.gateways {:?} does not name {}/{}",
        vs["metadata"]["name"],
        parsed.gateways,
        spec.gateway_namespace,
        spec.gateway_name
    );
    assert!(
        parsed.unsupported().is_empty(),
        "fields splitgate would ignore: {:?}",
        parsed.unsupported()
    );
    assert!(!parsed.hosts.is_empty());
    parsed
        .http
        .iter()
        .flat_map(|h| &h.route)
        .map(|r| {
            service_of(&r.destination.host, ns, &spec.cluster_domain)
                .unwrap_or_else(|| panic!("{:?} is not a Service", r.destination.host))
        })
        .collect()
}

#[test]
fn the_argo_rollouts_example_binds_to_the_gateway_and_names_its_own_objects() {
    let spec = kube_spec();
    let docs = manifests("examples/argo-rollouts.yaml");
    let rollout = only(&docs, "Rollout");
    let ns = str_of(&rollout["metadata"]["namespace"], "namespace");
    the(&docs, "Namespace", ns);
    let canary = &rollout["spec"]["strategy"]["canary"];

    // The VirtualService it steers, bound to splitgate, with the routes it names.
    let vs_ref = &canary["trafficRouting"]["istio"]["virtualService"];
    let vs = the(
        &docs,
        "VirtualService",
        str_of(&vs_ref["name"], "virtualService.name"),
    );
    assert_eq!(vs["metadata"]["namespace"], ns);
    let rule_names: Vec<&Value> = vs["spec"]["http"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| &h["name"])
        .collect();
    for route in vs_ref["routes"].as_array().expect("routes are named") {
        assert!(rule_names.contains(&route), "no http rule named {route}");
    }

    // Host-level: its two Services, which the VirtualService's destinations are.
    let stable = str_of(&canary["stableService"], "stableService");
    let canary_svc = str_of(&canary["canaryService"], "canaryService");
    assert_ne!(stable, canary_svc);
    let pod_labels = &rollout["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &rollout["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let container_ports: Vec<&Value> = rollout["spec"]["template"]["spec"]["containers"][0]
        ["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| &p["name"])
        .collect();
    for name in [stable, canary_svc] {
        let svc = service(&docs, ns, name);
        assert!(selects(&svc["spec"]["selector"], pod_labels), "{name}");
        for port in svc["spec"]["ports"].as_array().unwrap() {
            assert!(
                container_ports.contains(&&port["targetPort"]),
                "{name}: {port}"
            );
        }
    }
    let destinations = served_virtual_service(vs, &spec);
    let expected: BTreeSet<(String, String)> = [stable, canary_svc]
        .iter()
        .map(|s| (ns.to_string(), s.to_string()))
        .collect();
    assert_eq!(destinations, expected);

    // Steps 10/50/100 with pauses between.
    let steps = canary["steps"].as_array().unwrap();
    let weights: Vec<u64> = steps
        .iter()
        .filter_map(|s| s["setWeight"].as_u64())
        .collect();
    assert_eq!(weights, [10, 50, 100]);
    assert!(steps.iter().any(|s| s.get("pause").is_some()));

    // Its analysis: a template in the file, given every argument it lacks a value for, and
    // a query in Istio's labels.
    let analysis = &canary["analysis"];
    let given: BTreeSet<&str> = analysis["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| str_of(&a["name"], "arg"))
        .collect();
    for t in analysis["templates"].as_array().unwrap() {
        let template = the(
            &docs,
            "AnalysisTemplate",
            str_of(&t["templateName"], "templateName"),
        );
        assert_eq!(template["metadata"]["namespace"], ns);
        for arg in template["spec"]["args"].as_array().unwrap() {
            let name = str_of(&arg["name"], "arg");
            assert!(
                arg.get("value").is_some() || given.contains(name),
                "argument {name} has no value"
            );
        }
        for metric in template["spec"]["metrics"].as_array().unwrap() {
            let query = str_of(&metric["provider"]["prometheus"]["query"], "query");
            for label in [
                "istio_requests_total",
                "destination_service_name=",
                "response_code",
            ] {
                assert!(query.contains(label), "the query has no {label}");
            }
            assert_eq!(
                query.matches("reporter=\"source\"").count(),
                query.matches("istio_requests_total").count(),
                "every selector reads the gateway's own series (reporter=\"source\")"
            );
        }
    }
    let reporter = kube_config().raw.metrics.reporter;
    assert!(
        reporter == "source" || reporter == "both",
        "the analysis reads reporter=\"source\"; the config reports {reporter}"
    );
}

#[test]
fn the_flagger_example_binds_to_the_gateway_and_uses_the_builtin_checks() {
    let spec = kube_spec();
    let docs = manifests("examples/flagger.yaml");
    let canary = only(&docs, "Canary");
    let ns = str_of(&canary["metadata"]["namespace"], "namespace");
    the(&docs, "Namespace", ns);
    let c = &canary["spec"];
    assert_eq!(c["provider"], "istio");

    // Flagger writes its VirtualService in the Canary's namespace, with these gateways.
    let gateways = strings(&c["service"]["gateways"]);
    assert!(!gateways.is_empty());
    for g in &gateways {
        assert!(
            names_gateway(g, ns, &spec),
            "service.gateways entry {g:?} does not name {}/{}",
            spec.gateway_namespace,
            spec.gateway_name
        );
    }
    assert!(!strings(&c["service"]["hosts"]).is_empty());

    // The Deployment it releases is in the file, and serves on the target port.
    let target = &c["targetRef"];
    assert_eq!(target["kind"], "Deployment");
    let dep = the(
        &docs,
        "Deployment",
        str_of(&target["name"], "targetRef.name"),
    );
    assert_eq!(dep["metadata"]["namespace"], ns);
    let ports: Vec<&Value> = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| [&p["containerPort"], &p["name"]])
        .collect();
    assert!(ports.contains(&&c["service"]["targetPort"]));

    let a = &c["analysis"];
    assert_eq!(a["canaryReadyThreshold"], 100);
    assert_eq!(a["primaryReadyThreshold"], 100);
    let metrics: BTreeSet<&str> = a["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m.get("templateRef").is_none(), "builtin checks: {m}");
            str_of(&m["name"], "metric name")
        })
        .collect();
    assert_eq!(
        metrics,
        BTreeSet::from(["request-duration", "request-success-rate"])
    );
    // Flagger's builtin Istio checks query reporter="destination".
    let reporter = kube_config().raw.metrics.reporter;
    assert!(
        reporter == "destination" || reporter == "both",
        "Flagger's builtin checks read reporter=\"destination\"; the config reports {reporter}"
    );
}
