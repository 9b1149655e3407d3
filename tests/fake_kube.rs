//! The fake Kubernetes API server (tests/common/fake_kube.rs) checked against a real client,
//! `kubectl`, and at the protocol level with plain HTTP. Every wait is bounded and every child
//! process is killed when its test ends, so a broken fake fails a test instead of hanging it.
mod common;

use bytes::Bytes;
use common::fake_kube::FakeKube;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::time::timeout;

/// Long enough for a loaded 2-core machine, short enough that a hang is reported.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// kubectl as a subprocess
// ---------------------------------------------------------------------------------------------

struct Kubectl {
    kubeconfig: PathBuf,
    /// kubectl caches discovery under $HOME by default; a private cache keeps runs apart.
    cache: PathBuf,
    dir: PathBuf,
}

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(&self) -> &str {
        assert!(
            self.status.success(),
            "kubectl failed: {}\n{}",
            self.status,
            self.stderr
        );
        &self.stdout
    }
}

impl Kubectl {
    fn new(kube: &FakeKube) -> Self {
        let dir = common::temp_dir("kubectl");
        Kubectl {
            kubeconfig: kube.write_kubeconfig(&dir),
            cache: dir.join("cache"),
            dir,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache)
            .args(args)
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Runs kubectl to completion off the runtime (the fake is served on it), killing it if it
    /// outlives [`WAIT`].
    async fn run(&self, args: &[&str]) -> Out {
        let cmd = self.command(args);
        let what = args.join(" ");
        tokio::task::spawn_blocking(move || run_bounded(cmd, WAIT))
            .await
            .expect("kubectl runner")
            .unwrap_or_else(|e| panic!("kubectl {what}: {e}"))
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Out, String> {
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    match status {
        Some(status) => Ok(Out {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!("timed out after {limit:?}; stderr: {stderr}")),
    }
}

/// A long-running kubectl (`get --watch`) whose stdout is parsed as a stream of JSON documents;
/// killed on drop.
struct KubectlStream {
    child: std::process::Child,
    docs: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl KubectlStream {
    fn spawn(k: &Kubectl, args: &[&str]) -> Self {
        let mut cmd = k.command(args);
        cmd.stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawn kubectl");
        let stdout = child.stdout.take().unwrap();
        let (tx, docs) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            // Watch events come one per line, other documents pretty-printed over several:
            // collect lines until they parse.
            let mut acc = String::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                acc.push_str(&line);
                acc.push('\n');
                if let Ok(v) = serde_json::from_str::<Value>(&acc) {
                    if tx.send(v).is_err() {
                        return;
                    }
                    acc.clear();
                }
            }
        });
        KubectlStream { child, docs }
    }

    async fn next(&mut self) -> Value {
        timeout(WAIT, self.docs.recv())
            .await
            .expect("kubectl printed nothing in time")
            .expect("kubectl exited")
    }
}

impl Drop for KubectlStream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Plain HTTP
// ---------------------------------------------------------------------------------------------

async fn call(
    kube: &FakeKube,
    method: Method,
    path: &str,
    content_type: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let req = Request::builder()
        .method(method)
        .uri(format!("{}{path}", kube.url()))
        .header("content-type", content_type)
        .body(Full::new(body))
        .unwrap();
    let resp = timeout(WAIT, common::http1_client().request(req))
        .await
        .expect("response in time")
        .expect("request");
    let status = resp.status();
    let bytes = timeout(WAIT, resp.into_body().collect())
        .await
        .expect("body in time")
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(kube: &FakeKube, path: &str) -> (StatusCode, Value) {
    call(kube, Method::GET, path, "application/json", None).await
}

/// One open watch response, read as newline-delimited JSON events.
struct Watch {
    body: Incoming,
    buf: Vec<u8>,
}

impl Watch {
    async fn open(kube: &FakeKube, path: &str) -> Watch {
        let req = Request::get(format!("{}{path}", kube.url()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = timeout(WAIT, common::http1_client().request(req))
            .await
            .expect("watch answered in time")
            .expect("watch request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["transfer-encoding"], "chunked");
        Watch {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// The next event, or `None` once the server ends the stream.
    async fn next(&mut self) -> Option<Value> {
        timeout(WAIT, self.next_unbounded())
            .await
            .expect("watch event in time")
    }

    async fn next_unbounded(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("one JSON event per line"));
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Asserts nothing arrives for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(ev) = timeout(d, self.next_unbounded()).await {
            panic!("expected silence, got {ev:?}");
        }
    }
}

fn ev(e: &Value) -> (&str, &str) {
    (
        e["type"].as_str().unwrap(),
        e["object"]["metadata"]["name"].as_str().unwrap_or(""),
    )
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn vs(ns: &str, name: &str, host: &str) -> Value {
    json!({
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host, "subset": "v1"}}]}]},
    })
}

fn pod(name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "reviews:1"}]},
    })
}

// ---------------------------------------------------------------------------------------------
// kubectl
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn kubectl_lists_objects_under_every_istio_version() {
    let kube = FakeKube::start().await;
    kube.apply(vs("bookinfo", "reviews", "reviews"));
    let mut other = vs("shop", "cart", "cart");
    other["apiVersion"] = json!("networking.istio.io/v1alpha3");
    kube.apply(other);
    let k = Kubectl::new(&kube);

    let out = k
        .run(&[
            "get",
            "virtualservices.v1beta1.networking.istio.io",
            "-A",
            "-o",
            "json",
        ])
        .await;
    let list: Value = serde_json::from_str(out.ok()).unwrap();
    let items = list["items"].as_array().unwrap();
    let names: Vec<(&str, &str)> = items
        .iter()
        .map(|i| {
            (
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("bookinfo", "reviews"), ("shop", "cart")]);
    for i in items {
        assert_eq!(i["apiVersion"], "networking.istio.io/v1beta1");
        assert_eq!(i["kind"], "VirtualService");
    }

    // The short name resolves through discovery, to the preferred version.
    let out = k.run(&["get", "vs", "-n", "bookinfo", "-o", "json"]).await;
    let list: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(list["items"][0]["apiVersion"], "networking.istio.io/v1");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let out = k.run(&["get", "dr", "-A"]).await;
    assert!(out.stderr.contains("No resources found"), "{}", out.stderr);
    let reqs = kube.requests();
    assert!(
        reqs.contains(
            &"GET /apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices?limit=500"
                .to_string()
        ),
        "{reqs:#?}"
    );
}

#[tokio::test]
async fn kubectl_honours_label_and_field_selectors() {
    let kube = FakeKube::start().await;
    kube.apply(pod(
        "reviews-v1",
        json!({"app": "reviews", "version": "v1"}),
    ));
    kube.apply(pod(
        "reviews-v2",
        json!({"app": "reviews", "version": "v2"}),
    ));
    kube.apply(pod(
        "reviews-v3",
        json!({"app": "reviews", "version": "v3"}),
    ));
    kube.apply(pod(
        "ratings-v1",
        json!({"app": "ratings", "version": "v1"}),
    ));
    kube.apply(pod("unlabelled", json!({})));
    let k = Kubectl::new(&kube);
    let names = |out: &Out| {
        let mut v: Vec<String> = out.ok().lines().map(str::to_string).collect();
        v.sort();
        v
    };

    let out = k
        .run(&["get", "pods", "-l", "app=reviews,version!=v1", "-o", "name"])
        .await;
    assert_eq!(names(&out), ["pod/reviews-v2", "pod/reviews-v3"]);
    let out = k
        .run(&["get", "pods", "-l", "version in (v1,v3),app", "-o", "name"])
        .await;
    assert_eq!(
        names(&out),
        ["pod/ratings-v1", "pod/reviews-v1", "pod/reviews-v3"]
    );
    let out = k.run(&["get", "pods", "-l", "!app", "-o", "name"]).await;
    assert_eq!(names(&out), ["pod/unlabelled"]);
    let out = k
        .run(&["get", "pods", "-l", "app notin (reviews)", "-o", "name"])
        .await;
    assert_eq!(names(&out), ["pod/ratings-v1", "pod/unlabelled"]);
    let out = k
        .run(&[
            "get",
            "pods",
            "--field-selector",
            "metadata.name=reviews-v2",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(names(&out), ["pod/reviews-v2"]);
    let out = k
        .run(&[
            "get",
            "pods",
            "-A",
            "--field-selector",
            "metadata.namespace=default,metadata.name!=unlabelled",
            "-l",
            "version=v1",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(names(&out), ["pod/ratings-v1", "pod/reviews-v1"]);
}

#[tokio::test]
async fn kubectl_watch_sees_added_then_modified() {
    let kube = FakeKube::start().await;
    kube.apply(vs("bookinfo", "reviews", "reviews"));
    let k = Kubectl::new(&kube);
    let mut w = KubectlStream::spawn(
        &k,
        &[
            "get",
            "virtualservices",
            "-n",
            "bookinfo",
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ],
    );
    let first = w.next().await;
    assert_eq!(ev(&first), ("ADDED", "reviews"));
    eventually("kubectl to open its watch", || kube.watch_count() == 1).await;

    let mut changed = vs("bookinfo", "reviews", "reviews");
    changed["spec"]["http"][0]["route"][0]["destination"]["subset"] = json!("v2");
    let stored = kube.apply(changed);
    let second = w.next().await;
    assert_eq!(ev(&second), ("MODIFIED", "reviews"));
    assert_eq!(
        second["object"]["spec"]["http"][0]["route"][0]["destination"]["subset"],
        "v2"
    );
    assert_eq!(
        second["object"]["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );
    assert_eq!(second["object"]["metadata"]["generation"], 2);
    assert_eq!(second["object"]["apiVersion"], "networking.istio.io/v1");

    kube.apply(vs("bookinfo", "details", "details"));
    assert_eq!(ev(&w.next().await), ("ADDED", "details"));
    kube.delete(
        "networking.istio.io/v1",
        "VirtualService",
        "bookinfo",
        "details",
    );
    assert_eq!(ev(&w.next().await), ("DELETED", "details"));

    let watch = kube
        .requests()
        .into_iter()
        .find(|r| r.contains("watch=true"))
        .unwrap();
    assert!(
        watch.starts_with("GET /apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices?"),
        "{watch}"
    );
    assert!(watch.contains("resourceVersion=1"), "{watch}");
    drop(w);
    eventually("the watch to close after kubectl died", || {
        kube.watch_count() == 0
    })
    .await;
}

#[tokio::test]
async fn kubectl_apply_creates_then_patches() {
    let kube = FakeKube::start().await;
    let k = Kubectl::new(&kube);
    let manifest = |subset: &str, port: u16| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
  namespace: bookinfo
spec:
  hosts: [ratings]
  http:
    - route:
        - destination: {{host: ratings, subset: {subset}}}
---
apiVersion: v1
kind: Service
metadata:
  name: ratings
  namespace: bookinfo
  labels: {{app: ratings}}
spec:
  selector: {{app: ratings}}
  ports:
    - {{name: http, port: {port}}}
    - {{name: metrics, port: 15020}}
"
        )
    };
    let file = k.write("ratings.yaml", &manifest("v1", 9080));
    let f = file.to_str().unwrap();
    let out = k.run(&["apply", "-f", f]).await;
    assert_eq!(
        out.ok(),
        "virtualservice.networking.istio.io/ratings created\nservice/ratings created\n"
    );
    let v = kube
        .get(
            "networking.istio.io/v1",
            "VirtualService",
            "bookinfo",
            "ratings",
        )
        .unwrap();
    assert_eq!(v["metadata"]["generation"], 1);
    assert!(
        v["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .is_string()
    );

    std::fs::write(&file, manifest("v2", 9081)).unwrap();
    let out = k.run(&["apply", "-f", f]).await;
    assert_eq!(
        out.ok(),
        "virtualservice.networking.istio.io/ratings configured\nservice/ratings configured\n"
    );
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let v = kube
        .get(
            "networking.istio.io/v1beta1",
            "VirtualService",
            "bookinfo",
            "ratings",
        )
        .unwrap();
    assert_eq!(
        v["spec"]["http"][0]["route"][0]["destination"]["subset"],
        "v2"
    );
    assert_eq!(v["metadata"]["generation"], 2);
    // A strategic merge patch on a keyed list: the changed port replaced, the other kept.
    let s = kube.get("v1", "Service", "bookinfo", "ratings").unwrap();
    assert_eq!(
        s["spec"]["ports"],
        json!([{"name": "http", "port": 9081}, {"name": "metrics", "port": 15020}])
    );
    let patches: Vec<String> = kube
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH "))
        .collect();
    assert_eq!(patches.len(), 2, "{patches:#?}");

    let rv = kube.resource_version();
    let out = k.run(&["apply", "-f", f]).await;
    assert_eq!(
        out.ok(),
        "virtualservice.networking.istio.io/ratings unchanged\nservice/ratings unchanged\n"
    );
    assert_eq!(kube.resource_version(), rv);
}

#[tokio::test]
async fn kubectl_create_replace_and_delete() {
    let kube = FakeKube::start().await;
    let k = Kubectl::new(&kube);
    let file = k.write(
        "dr.yaml",
        "apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
",
    );
    let f = file.to_str().unwrap();
    assert_eq!(
        k.run(&["create", "-f", f]).await.ok(),
        "destinationrule.networking.istio.io/reviews created\n"
    );
    let again = k.run(&["create", "-f", f]).await;
    assert!(!again.status.success());
    assert!(again.stderr.contains("(AlreadyExists)"), "{}", again.stderr);

    // `replace` with the resourceVersion the server holds succeeds; with a stale one it
    // conflicts, as the real server's optimistic concurrency does.
    let current = kube
        .get(
            "networking.istio.io/v1beta1",
            "DestinationRule",
            "bookinfo",
            "reviews",
        )
        .unwrap();
    let rv = current["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut next = current.clone();
    next["spec"]["subsets"] = json!([{"name": "v2", "labels": {"version": "v2"}}]);
    let file = k.write("dr.json", &next.to_string());
    let f = file.to_str().unwrap();
    assert_eq!(
        k.run(&["replace", "-f", f]).await.ok(),
        "destinationrule.networking.istio.io/reviews replaced\n"
    );
    let stale = k.run(&["replace", "-f", f]).await;
    assert!(!stale.status.success());
    assert!(stale.stderr.contains("(Conflict)"), "{}", stale.stderr);
    assert!(
        stale.stderr.contains("the object has been modified"),
        "{}",
        stale.stderr
    );
    let now = kube
        .get(
            "networking.istio.io/v1",
            "DestinationRule",
            "bookinfo",
            "reviews",
        )
        .unwrap();
    assert_ne!(now["metadata"]["resourceVersion"], json!(rv));
    assert_eq!(now["metadata"]["generation"], 2);
    assert_eq!(now["metadata"]["uid"], current["metadata"]["uid"]);

    let out = k.run(&["delete", "dr", "reviews", "-n", "bookinfo"]).await;
    assert_eq!(
        out.ok(),
        "destinationrule.networking.istio.io \"reviews\" deleted\n"
    );
    assert!(kube
        .get(
            "networking.istio.io/v1",
            "DestinationRule",
            "bookinfo",
            "reviews"
        )
        .is_none());
    let gone = k.run(&["delete", "dr", "reviews", "-n", "bookinfo"]).await;
    assert!(gone.stderr.contains("(NotFound)"), "{}", gone.stderr);
    assert!(
        gone.stderr
            .contains("destinationrules.networking.istio.io \"reviews\" not found"),
        "{}",
        gone.stderr
    );
}

#[tokio::test]
async fn kubectl_patch_label_and_delete_by_selector() {
    let kube = FakeKube::start().await;
    kube.apply(vs("bookinfo", "reviews", "reviews"));
    kube.apply(pod("a", json!({"app": "x"})));
    kube.apply(pod("b", json!({"app": "y"})));
    let k = Kubectl::new(&kube);

    k.run(&["label", "vs", "reviews", "-n", "bookinfo", "team=mesh"])
        .await
        .ok();
    let v = kube
        .get(
            "networking.istio.io/v1",
            "VirtualService",
            "bookinfo",
            "reviews",
        )
        .unwrap();
    assert_eq!(v["metadata"]["labels"]["team"], "mesh");
    assert_eq!(v["metadata"]["generation"], 1);

    k.run(&[
        "patch",
        "vs",
        "reviews",
        "-n",
        "bookinfo",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"hosts":["reviews.bookinfo"]}}"#,
    ])
    .await
    .ok();
    k.run(&[
        "patch",
        "vs",
        "reviews",
        "-n",
        "bookinfo",
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/spec/gateways","value":["mesh"]}]"#,
    ])
    .await
    .ok();
    let v = kube
        .get(
            "networking.istio.io/v1",
            "VirtualService",
            "bookinfo",
            "reviews",
        )
        .unwrap();
    assert_eq!(v["spec"]["hosts"], json!(["reviews.bookinfo"]));
    assert_eq!(v["spec"]["gateways"], json!(["mesh"]));
    assert_eq!(v["metadata"]["generation"], 3);

    k.run(&["delete", "pods", "-l", "app=x"]).await.ok();
    let left: Vec<Value> = kube.list("v1", "Pod");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["metadata"]["name"], "b");
}

#[tokio::test]
async fn kubectl_copes_without_aggregated_discovery() {
    let kube = FakeKube::start().await;
    kube.set_aggregated_discovery(false);
    kube.apply(vs("bookinfo", "reviews", "reviews"));
    let k = Kubectl::new(&kube);
    let out = k.run(&["get", "vs", "-A", "-o", "name"]).await;
    assert_eq!(out.ok(), "virtualservice.networking.istio.io/reviews\n");
    let reqs = kube.requests();
    for want in [
        "GET /api/v1?timeout=32s",
        "GET /apis/networking.istio.io/v1?timeout=32s",
        "GET /apis/networking.istio.io/v1alpha3?timeout=32s",
        "GET /apis/discovery.k8s.io/v1?timeout=32s",
    ] {
        assert!(reqs.iter().any(|r| r == want), "{want} missing: {reqs:#?}");
    }
    let out = k
        .run(&["api-resources", "--api-group=networking.istio.io"])
        .await;
    let text = out.ok();
    for want in [
        "virtualservices",
        "vs",
        "destinationrules",
        "dr",
        "gateways",
        "gw",
    ] {
        assert!(text.split_whitespace().any(|w| w == want), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Protocol
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn list_get_and_not_found_have_the_real_shapes() {
    let kube = FakeKube::start().await;
    kube.apply(vs("bookinfo", "reviews", "reviews"));
    kube.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bookinfo"}}));

    let (code, list) = get(&kube, "/apis/networking.istio.io/v1alpha3/virtualservices").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["kind"], "VirtualServiceList");
    assert_eq!(list["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(list["metadata"]["resourceVersion"], "2");
    assert!(list["metadata"].get("continue").is_none());
    let item = &list["items"][0];
    assert_eq!(item["kind"], "VirtualService");
    assert_eq!(item["apiVersion"], "networking.istio.io/v1alpha3");
    assert_eq!(item["metadata"]["resourceVersion"], "1");
    assert_eq!(item["metadata"]["generation"], 1);
    assert!(item["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(item["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap()
        .ends_with('Z'));

    let (code, ns) = get(&kube, "/api/v1/namespaces/bookinfo").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(ns["kind"], "Namespace");
    assert!(ns["metadata"].get("namespace").is_none());

    let (code, status) = get(
        &kube,
        "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices/nope",
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(
        status,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "NotFound", "code": 404,
            "message": "virtualservices.networking.istio.io \"nope\" not found",
            "details": {"name": "nope", "group": "networking.istio.io", "kind": "virtualservices"},
        })
    );
    let (code, _) = get(&kube, "/apis/networking.istio.io/v2/virtualservices").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, status) = get(&kube, "/api/v1/pods?labelSelector=a%20in%20(b").await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert_eq!(status["reason"], "BadRequest");

    let (_, rl) = get(&kube, "/apis/networking.istio.io/v1beta1").await;
    let vs = rl["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "virtualservices")
        .unwrap();
    assert_eq!(vs["shortNames"], json!(["vs"]));
    assert_eq!(vs["kind"], "VirtualService");
    assert_eq!(vs["namespaced"], true);
    for verb in [
        "list", "watch", "get", "create", "update", "patch", "delete",
    ] {
        assert!(vs["verbs"].as_array().unwrap().contains(&json!(verb)));
    }
}

#[tokio::test]
async fn watch_replays_history_after_the_given_resource_version() {
    let kube = FakeKube::start().await;
    kube.apply(vs("a", "one", "one")); // rv 1
    kube.apply(vs("a", "two", "two")); // rv 2
    kube.apply(vs("b", "three", "three")); // rv 3
    kube.delete("networking.istio.io/v1", "VirtualService", "a", "one"); // rv 4

    let mut w = Watch::open(
        &kube,
        "/apis/networking.istio.io/v1/namespaces/a/virtualservices?watch=1&resourceVersion=1",
    )
    .await;
    let e = w.next().await.unwrap();
    assert_eq!(ev(&e), ("ADDED", "two"));
    assert_eq!(e["object"]["metadata"]["resourceVersion"], "2");
    let e = w.next().await.unwrap();
    assert_eq!(ev(&e), ("DELETED", "one"));
    // A delete carries the object's last state at the delete's resourceVersion.
    assert_eq!(e["object"]["metadata"]["resourceVersion"], "4");
    assert_eq!(e["object"]["spec"]["hosts"], json!(["one"]));

    kube.apply(vs("b", "four", "four"));
    kube.apply(vs("a", "five", "five"));
    let e = w.next().await.unwrap();
    assert_eq!(ev(&e), ("ADDED", "five"));
    assert_eq!(e["object"]["metadata"]["resourceVersion"], "6");

    // No resourceVersion (or "0"): the current state as ADDED, then live events.
    for rv in ["", "&resourceVersion=0"] {
        let mut w = Watch::open(
            &kube,
            &format!("/apis/networking.istio.io/v1beta1/virtualservices?watch=true{rv}"),
        )
        .await;
        let mut names = Vec::new();
        for _ in 0..4 {
            let e = w.next().await.unwrap();
            assert_eq!(e["type"], "ADDED");
            assert_eq!(e["object"]["apiVersion"], "networking.istio.io/v1beta1");
            names.push(ev(&e).1.to_string());
        }
        assert_eq!(names, ["five", "two", "four", "three"]);
        w.quiet_for(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn watch_from_before_compaction_gets_410_expired() {
    let kube = FakeKube::start().await;
    kube.apply(vs("a", "one", "one"));
    kube.apply(vs("a", "two", "two"));
    kube.compact();
    kube.apply(vs("a", "three", "three"));

    let mut w = Watch::open(
        &kube,
        "/apis/networking.istio.io/v1/virtualservices?watch=true&resourceVersion=1&allowWatchBookmarks=true",
    )
    .await;
    let e = w.next().await.unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(e["object"]["kind"], "Status");
    assert_eq!(e["object"]["apiVersion"], "v1");
    assert_eq!(e["object"]["status"], "Failure");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
    assert_eq!(w.next().await, None, "the stream ends after the error");

    // From the compaction point on, history is still there.
    let mut w = Watch::open(
        &kube,
        "/apis/networking.istio.io/v1/virtualservices?watch=true&resourceVersion=2",
    )
    .await;
    assert_eq!(ev(&w.next().await.unwrap()), ("ADDED", "three"));

    // A list with an old resourceVersion still answers the current state.
    let (code, list) = get(
        &kube,
        "/apis/networking.istio.io/v1/virtualservices?resourceVersion=1&resourceVersionMatch=NotOlderThan",
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert_eq!(list["metadata"]["resourceVersion"], "3");
}

#[tokio::test]
async fn bookmarks_arrive_only_when_allowed_and_before_timeout() {
    let kube = FakeKube::start().await;
    kube.set_bookmark_interval(Duration::from_millis(100));
    kube.apply(pod("a", json!({"app": "a"})));
    kube.apply(pod("b", json!({"app": "b"})));

    let mut w = Watch::open(
        &kube,
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion=2&allowWatchBookmarks=true&labelSelector=app%3Da",
    )
    .await;
    let b = w.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(
        b["object"],
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": "2"}})
    );
    // A write the selector filters out still moves the bookmark on.
    kube.apply(pod("c", json!({"app": "c"})));
    loop {
        let b = w.next().await.unwrap();
        assert_eq!(b["type"], "BOOKMARK");
        if b["object"]["metadata"]["resourceVersion"] == "3" {
            break;
        }
    }

    let mut plain = Watch::open(
        &kube,
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion=3",
    )
    .await;
    plain.quiet_for(Duration::from_millis(400)).await;

    // timeoutSeconds ends the stream, with a last bookmark first when they are allowed.
    kube.set_bookmark_interval(Duration::from_secs(60));
    let mut w = Watch::open(
        &kube,
        "/api/v1/pods?watch=true&resourceVersion=3&allowWatchBookmarks=true&timeoutSeconds=1",
    )
    .await;
    let started = Instant::now();
    let b = w.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(w.next().await, None);
}

#[tokio::test]
async fn send_initial_events_ends_with_an_annotated_bookmark() {
    let kube = FakeKube::start().await;
    kube.apply(pod("a", json!({})));
    let mut w = Watch::open(
        &kube,
        "/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(ev(&w.next().await.unwrap()), ("ADDED", "a"));
    let b = w.next().await.unwrap();
    assert_eq!(b["type"], "BOOKMARK");
    assert_eq!(b["object"]["metadata"]["resourceVersion"], "1");
    assert_eq!(
        b["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn generation_rises_on_spec_changes_only() {
    let kube = FakeKube::start().await;
    let path = "/apis/networking.istio.io/v1/namespaces/bookinfo/virtualservices";
    let (code, created) = call(
        &kube,
        Method::POST,
        path,
        "application/json",
        Some(vs("bookinfo", "reviews", "reviews")),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED);
    assert_eq!(created["metadata"]["generation"], 1);
    assert_eq!(created["apiVersion"], "networking.istio.io/v1");

    let item = format!("{path}/reviews");
    let (code, labelled) = call(
        &kube,
        Method::PATCH,
        &item,
        "application/merge-patch+json",
        Some(json!({"metadata": {"labels": {"team": "mesh"}}})),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(labelled["metadata"]["generation"], 1);
    assert_eq!(labelled["metadata"]["labels"]["team"], "mesh");
    assert_eq!(labelled["metadata"]["resourceVersion"], "2");
    assert_eq!(labelled["metadata"]["uid"], created["metadata"]["uid"]);

    let (_, changed) = call(
        &kube,
        Method::PATCH,
        &item,
        "application/merge-patch+json",
        Some(json!({"spec": {"hosts": ["reviews", "reviews.bookinfo"]}})),
    )
    .await;
    assert_eq!(changed["metadata"]["generation"], 2);
    assert_eq!(changed["metadata"]["resourceVersion"], "3");

    // A write that changes nothing is not a write: same resourceVersion, no event.
    let (_, same) = call(
        &kube,
        Method::PATCH,
        &item,
        "application/merge-patch+json",
        Some(json!({"spec": {"hosts": ["reviews", "reviews.bookinfo"]}})),
    )
    .await;
    assert_eq!(same["metadata"]["resourceVersion"], "3");
    let mut full = changed.clone();
    full["spec"]["gateways"] = json!(["mesh"]);
    let (code, put) = call(&kube, Method::PUT, &item, "application/json", Some(full)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(put["metadata"]["generation"], 3);
    assert_eq!(
        put["metadata"]["creationTimestamp"],
        created["metadata"]["creationTimestamp"]
    );
}

#[tokio::test]
async fn put_with_a_stale_resource_version_conflicts() {
    let kube = FakeKube::start().await;
    let first = kube.apply(vs("bookinfo", "reviews", "reviews"));
    kube.apply(vs("bookinfo", "reviews", "reviews.bookinfo"));
    let item = "/apis/networking.istio.io/v1beta1/namespaces/bookinfo/virtualservices/reviews";

    let mut stale = first.clone();
    stale["spec"]["hosts"] = json!(["mine"]);
    let (code, status) = call(
        &kube,
        Method::PUT,
        item,
        "application/json",
        Some(stale.clone()),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Conflict");
    assert_eq!(status["code"], 409);

    // Without a resourceVersion the update is unconditional.
    stale["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    let (code, put) = call(&kube, Method::PUT, item, "application/json", Some(stale)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(put["spec"]["hosts"], json!(["mine"]));

    // A stale resourceVersion in a merge patch is a precondition too.
    let (code, _) = call(
        &kube,
        Method::PATCH,
        item,
        "application/merge-patch+json",
        Some(json!({"metadata": {"resourceVersion": "1"}, "spec": {"hosts": ["x"]}})),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT);

    let (code, status) = call(
        &kube,
        Method::POST,
        "/apis/networking.istio.io/v1beta1/namespaces/bookinfo/virtualservices",
        "application/json",
        Some(vs("bookinfo", "reviews", "reviews")),
    )
    .await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert_eq!(status["reason"], "AlreadyExists");
    let (code, _) = call(
        &kube,
        Method::PUT,
        "/apis/networking.istio.io/v1beta1/namespaces/bookinfo/virtualservices/absent",
        "application/json",
        Some(vs("bookinfo", "absent", "x")),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn label_selector_watch_sees_objects_leave_and_enter() {
    let kube = FakeKube::start().await;
    kube.apply(pod("p", json!({"app": "reviews", "version": "v1"})));
    let rv = kube.resource_version();
    let mut w = Watch::open(
        &kube,
        &format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&labelSelector=app%3Dreviews%2Cversion%20in%20%28v1%29"
        ),
    )
    .await;

    kube.apply(pod(
        "p",
        json!({"app": "reviews", "version": "v1", "extra": "x"}),
    ));
    assert_eq!(ev(&w.next().await.unwrap()), ("MODIFIED", "p"));

    let after = kube.apply(pod("p", json!({"app": "reviews", "version": "v2"})));
    let e = w.next().await.unwrap();
    assert_eq!(ev(&e), ("DELETED", "p"));
    // The state it was seen in, at the resourceVersion of the change that removed it.
    assert_eq!(e["object"]["metadata"]["labels"]["version"], "v1");
    assert_eq!(
        e["object"]["metadata"]["resourceVersion"],
        after["metadata"]["resourceVersion"]
    );

    kube.apply(pod("p", json!({"app": "reviews", "version": "v3"})));
    kube.apply(pod("p", json!({"app": "reviews", "version": "v1"})));
    let e = w.next().await.unwrap();
    assert_eq!(ev(&e), ("ADDED", "p"));
    assert_eq!(e["object"]["metadata"]["labels"]["version"], "v1");

    // A field selector on a watch behaves the same way.
    let mut named = Watch::open(
        &kube,
        "/api/v1/pods?watch=true&fieldSelector=metadata.name%3Dq",
    )
    .await;
    kube.apply(pod("other", json!({})));
    kube.apply(pod("q", json!({})));
    assert_eq!(ev(&named.next().await.unwrap()), ("ADDED", "q"));
}

#[tokio::test]
async fn drop_watches_ends_every_stream() {
    let kube = FakeKube::start().await;
    let mut a = Watch::open(&kube, "/api/v1/pods?watch=true").await;
    let mut b = Watch::open(
        &kube,
        "/apis/networking.istio.io/v1/virtualservices?watch=true&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(kube.watch_count(), 2);
    kube.drop_watches();
    assert_eq!(a.next().await, None);
    assert_eq!(b.next().await, None);
    eventually("no watches", || kube.watch_count() == 0).await;

    // New watches work as before.
    let mut c = Watch::open(&kube, "/api/v1/pods?watch=true").await;
    kube.apply(pod("x", json!({})));
    assert_eq!(ev(&c.next().await.unwrap()), ("ADDED", "x"));
    assert!(
        kube.requests()
            .iter()
            .filter(|r| r.contains("watch=true"))
            .count()
            == 3
    );
}

#[tokio::test]
async fn an_outage_answers_503_and_closes_watches() {
    let kube = FakeKube::start().await;
    let mut w = Watch::open(&kube, "/api/v1/pods?watch=true").await;
    kube.set_down(true);
    assert_eq!(w.next().await, None);
    let (code, status) = get(&kube, "/api/v1/pods").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(status["code"], 503);
    kube.set_down(false);
    let (code, _) = get(&kube, "/api/v1/pods").await;
    assert_eq!(code, StatusCode::OK);
}

#[tokio::test]
async fn patches_strategic_json_and_unsupported() {
    let kube = FakeKube::start().await;
    let mut p = pod("p", json!({}));
    p["spec"]["containers"] = json!([
        {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
        {"name": "sidecar", "image": "proxy:1"},
    ]);
    kube.apply(p);
    let item = "/api/v1/namespaces/default/pods/p";
    let (code, patched) = call(
        &kube,
        Method::PATCH,
        item,
        "application/strategic-merge-patch+json",
        Some(json!({"spec": {"containers": [
            {"name": "app", "env": [{"name": "B", "value": "2"}]},
            {"name": "sidecar", "$patch": "delete"},
        ]}})),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        patched["spec"]["containers"],
        json!([{"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}])
    );

    let (code, patched) = call(
        &kube,
        Method::PATCH,
        item,
        "application/json-patch+json",
        Some(json!([
            {"op": "test", "path": "/spec/containers/0/image", "value": "app:1"},
            {"op": "replace", "path": "/spec/containers/0/image", "value": "app:2"},
            {"op": "add", "path": "/metadata/labels/a~1b", "value": "c"},
            {"op": "remove", "path": "/spec/containers/0/env/0"},
        ])),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(patched["spec"]["containers"][0]["image"], "app:2");
    assert_eq!(patched["metadata"]["labels"]["a/b"], "c");
    assert_eq!(
        patched["spec"]["containers"][0]["env"],
        json!([{"name": "B", "value": "2"}])
    );

    let (code, status) = call(
        &kube,
        Method::PATCH,
        item,
        "application/json-patch+json",
        Some(json!([{"op": "test", "path": "/spec/containers/0/image", "value": "nope"}])),
    )
    .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(status["reason"], "Invalid");
    let (code, status) = call(
        &kube,
        Method::PATCH,
        item,
        "application/apply-patch+yaml",
        Some(json!({})),
    )
    .await;
    assert_eq!(code, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(status["reason"], "UnsupportedMediaType");
}

#[tokio::test]
async fn aggregated_discovery_answers_in_the_v2_format() {
    let kube = FakeKube::start().await;
    let req = Request::get(format!("{}/apis", kube.url()))
        .header(
            "accept",
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = timeout(WAIT, common::http1_client().request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let doc: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(doc["kind"], "APIGroupDiscoveryList");
    let istio = doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["metadata"]["name"] == "networking.istio.io")
        .unwrap();
    let versions: Vec<&str> = istio["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v1beta1", "v1alpha3"]);
    let vs = &istio["versions"][1]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "virtualservices")
        .unwrap()
        .clone();
    assert_eq!(vs["scope"], "Namespaced");
    assert_eq!(vs["responseKind"]["version"], "v1beta1");

    // Asked without the aggregated form, the plain group list.
    let (_, plain) = get(&kube, "/apis").await;
    assert_eq!(plain["kind"], "APIGroupList");
    assert_eq!(plain["groups"][1]["preferredVersion"]["version"], "v1");
    let (_, core) = get(&kube, "/api").await;
    assert_eq!(core["versions"], json!(["v1"]));
}

#[tokio::test]
async fn apply_yaml_and_rust_helpers() {
    let kube = FakeKube::start().await;
    let applied = kube.apply_yaml(
        "apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec: {ports: [{port: 9080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: reviews-abc
  namespace: bookinfo
  labels: {kubernetes.io/service-name: reviews}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1]}]
ports: [{port: 9080}]
",
    );
    assert_eq!(applied.len(), 2);
    assert_eq!(applied[1]["kind"], "EndpointSlice");
    assert_eq!(applied[1]["metadata"]["resourceVersion"], "2");
    let (_, list) = get(
        &kube,
        "/apis/discovery.k8s.io/v1/namespaces/bookinfo/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dreviews",
    )
    .await;
    assert_eq!(list["items"][0]["endpoints"][0]["addresses"][0], "10.0.0.1");
    assert!(kube
        .delete("v1", "Service", "bookinfo", "reviews")
        .is_some());
    assert!(kube
        .delete("v1", "Service", "bookinfo", "reviews")
        .is_none());
    assert!(kube.get("v1", "Service", "bookinfo", "reviews").is_none());
}

#[tokio::test]
async fn dropping_the_fake_stops_everything() {
    let kube = FakeKube::start().await;
    let addr = kube.addr();
    let mut w = Watch::open(&kube, "/api/v1/pods?watch=true").await;
    drop(kube);
    assert_eq!(w.next().await, None);
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    timeout(WAIT, refused).await.expect("the listener closes");
}
