//! `deploy/`: every YAML file parses, every kustomization names files that exist, and the
//! Kubernetes manifests agree with each other and with the injector: Service selectors pick the
//! pods they are meant for, target ports exist, the monitors scrape the port and path the
//! sidecar serves, the webhook's Service, certificate and MutatingWebhookConfiguration point at
//! each other, the sidecar config uses the Istio ports the injector probes and scrapes, and the
//! generated files (the kustomize sidecar patch, the injected example, the dashboard ConfigMap)
//! are what the code generates today.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::inject::{self, manifest, Options};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn k8s() -> PathBuf {
    deploy().join("kubernetes")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read");
    manifest::parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{ptr} missing in {v}"))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not found"))
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `selector` (a map of labels) is a subset of `labels`.
fn selects(selector: &Value, labels_v: &Value) -> bool {
    let l = labels(labels_v);
    let sel = labels(selector);
    !sel.is_empty() && sel.iter().all(|(k, v)| l.get(k) == Some(v))
}

fn container_ports(pod_spec: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for key in ["containers", "initContainers"] {
        for c in pod_spec[key].as_array().into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                out.push((
                    p["name"].as_str().unwrap_or("").to_string(),
                    p["containerPort"].as_u64().unwrap_or(0),
                ));
            }
        }
    }
    out
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

#[test]
fn every_yaml_file_parses_and_every_kustomization_names_existing_files() {
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    assert!(files.len() >= 15, "{files:?}");
    for f in &files {
        let d = docs(f);
        assert!(!d.is_empty(), "{}: no document", f.display());
        if f.file_name().is_some_and(|n| n == "kustomization.yaml") {
            let k = &d[0];
            let dir = f.parent().expect("parent");
            for key in ["resources", "components"] {
                for r in k[key].as_array().into_iter().flatten() {
                    let p = dir.join(r.as_str().expect("path"));
                    assert!(p.exists(), "{}: {key} {} missing", f.display(), p.display());
                }
            }
            for p in k["patches"].as_array().into_iter().flatten() {
                match p["path"].as_str() {
                    Some(path) => {
                        let p = dir.join(path);
                        assert!(p.exists(), "{}: patch {} missing", f.display(), p.display());
                    }
                    None => assert!(p["patch"].is_string(), "{}: {p}", f.display()),
                }
            }
        } else if f.starts_with(k8s()) {
            for doc in &d {
                assert!(doc["apiVersion"].is_string(), "{}: {doc}", f.display());
                assert!(doc["kind"].is_string(), "{}", f.display());
                assert!(doc["metadata"]["name"].is_string(), "{}", f.display());
            }
        }
    }
}

#[test]
fn sidecar_config_is_valid_and_uses_the_istio_ports() {
    let cm = &docs(&k8s().join("sidecar/configmap.yaml"))[0];
    assert_eq!(s(cm, "/metadata/name"), inject::CONFIG_MAP_DEFAULT);
    let text = s(cm, &format!("/data/{}", inject::CONFIG_FILE));
    let cfg = sluice::config::parse("sluice-config", text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.admin.bind.value, "127.0.0.1:15000");
    let health = cfg.admin.health_bind.expect("health_bind").value;
    let prom = cfg.admin.prometheus_bind.expect("prometheus_bind").value;
    assert_eq!(port_of(&health), u64::from(inject::PORT_HEALTH));
    assert_eq!(port_of(&prom), u64::from(inject::PORT_PROMETHEUS));
    let ports: Vec<u64> = cfg
        .listeners
        .iter()
        .map(|l| port_of(&l.bind.value))
        .collect();
    assert!(
        ports.contains(&u64::from(inject::PORT_OUTBOUND)),
        "{ports:?}"
    );
    assert!(
        ports.contains(&u64::from(inject::PORT_INBOUND)),
        "{ports:?}"
    );
    // The drain must fit in the default grace period the example keeps.
    assert!(cfg.drain_timeout_ms < 30_000);

    let secret = &docs(&k8s().join("sidecar/secret.yaml"))[0];
    for (_, v) in secret["stringData"].as_object().expect("stringData") {
        assert!(
            v.as_str().is_some_and(|v| v.starts_with("REPLACE-ME")),
            "placeholder expected: {v}"
        );
    }
}

#[test]
fn the_kustomize_sidecar_patch_is_what_the_injector_adds() {
    let patch = &docs(&k8s().join("sidecar/sidecar-patch.yaml"))[0];
    let min = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      containers: [{name: app, image: app}]\n";
    let (out, _) = manifest::inject_yaml(min, &Options::default()).expect("inject");
    let injected = &manifest::parse_documents(&out).expect("parse")[0];
    let t = &injected["spec"]["template"];
    assert_eq!(
        patch["spec"]["template"]["spec"]["initContainers"],
        t["spec"]["initContainers"]
    );
    assert_eq!(
        patch["spec"]["template"]["spec"]["volumes"],
        t["spec"]["volumes"]
    );
    let mut ann = t["metadata"]["annotations"].clone();
    ann.as_object_mut()
        .expect("annotations")
        .remove("kubectl.kubernetes.io/default-container");
    assert_eq!(patch["spec"]["template"]["metadata"]["annotations"], ann);
    let k = &docs(&k8s().join("sidecar/kustomization.yaml"))[0];
    assert_eq!(
        s(k, "/patches/0/target/labelSelector"),
        format!("{}=true", inject::KEY_INJECT)
    );
}

#[test]
fn the_example_is_coherent_and_its_injected_form_is_current() {
    let dir = k8s().join("examples/chat");
    let app = docs(&dir.join("app.yaml"));
    let text = std::fs::read_to_string(dir.join("app.yaml")).expect("read");
    let opts = Options::default();
    let (out, reports) = manifest::inject_yaml(&text, &opts).expect("inject");
    assert_eq!(reports.len(), 1);
    let committed = std::fs::read_to_string(dir.join("app.injected.yaml")).expect("read");
    let body: String = committed
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        body, out,
        "app.injected.yaml is stale: run `sluice inject -f app.yaml -o app.injected.yaml` \
         (and keep its header comment)"
    );
    let injected = manifest::parse_documents(&out).expect("parse");

    let dep = find(&app, "Deployment", "chat");
    let tmpl_labels = &dep["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &dep["spec"]["selector"]["matchLabels"],
        tmpl_labels
    ));
    assert_eq!(dep["metadata"]["labels"][inject::KEY_INJECT], "true");
    assert_eq!(tmpl_labels[inject::KEY_INJECT], "true");
    let spec = &dep["spec"]["template"]["spec"];
    let app_c = &spec["containers"][0];

    // The application calls the sidecar's outbound listener; the sidecar's inbound upstream is
    // the application's port.
    let cm = &docs(&k8s().join("sidecar/configmap.yaml"))[0];
    let cfg = sluice::config::parse("cfg", s(cm, "/data/sluice.yaml")).expect("config");
    let env: BTreeMap<String, &Value> = app_c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (s(e, "/name").to_string(), e))
        .collect();
    let base = s(env["OPENAI_BASE_URL"], "/value");
    assert_eq!(
        base,
        format!("http://127.0.0.1:{}/v1", inject::PORT_OUTBOUND)
    );
    let outbound = cfg
        .listeners
        .iter()
        .find(|l| port_of(&l.bind.value) == u64::from(inject::PORT_OUTBOUND))
        .expect("outbound listener");
    assert!(outbound.bind.value.starts_with("127.0.0.1:"));
    let app_port = app_c["ports"][0]["containerPort"].as_u64().expect("port");
    assert_eq!(
        cfg.upstreams["app"].endpoints.value,
        vec![format!("127.0.0.1:{app_port}")]
    );
    assert_eq!(
        s(env["OPENAI_API_KEY"], "/valueFrom/secretKeyRef/name"),
        "provider-keys"
    );
    let secret = &docs(&k8s().join("sidecar/secret.yaml"))[0];
    let key = s(env["OPENAI_API_KEY"], "/valueFrom/secretKeyRef/key");
    assert!(secret["stringData"][key].is_string(), "secret key {key}");
    // The code volume names the code ConfigMap.
    let code_cm = s(&spec["volumes"][0], "/configMap/name");
    find(&app, "ConfigMap", code_cm);

    // Services select the pods, and their target ports exist on the injected pods.
    let injected_dep = find(&injected, "Deployment", "chat");
    let ports = container_ports(&injected_dep["spec"]["template"]["spec"]);
    for svc in app.iter().filter(|d| d["kind"] == "Service") {
        assert!(
            selects(&svc["spec"]["selector"], tmpl_labels),
            "{} selects no pod",
            svc["metadata"]["name"]
        );
        for p in svc["spec"]["ports"].as_array().expect("ports") {
            let ok = match &p["targetPort"] {
                Value::String(n) => ports.iter().any(|(name, _)| name == n),
                Value::Number(n) => ports.iter().any(|(_, port)| Some(*port) == n.as_u64()),
                _ => false,
            };
            assert!(
                ok,
                "{}: targetPort {} not on the pod {ports:?}",
                svc["metadata"]["name"], p["targetPort"]
            );
        }
    }

    // The ServiceMonitor scrapes the metrics Service, on the sidecar's port and path.
    let sm = &docs(&k8s().join("monitoring/servicemonitor.yaml"))[0];
    let msvc = find(&app, "Service", "chat-sluice-metrics");
    assert!(selects(
        &sm["spec"]["selector"]["matchLabels"],
        &msvc["metadata"]["labels"]
    ));
    let ep = &sm["spec"]["endpoints"][0];
    assert_eq!(s(ep, "/port"), inject::PORT_PROMETHEUS_NAME);
    assert_eq!(s(ep, "/path"), "/stats/prometheus");
    assert!(msvc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["name"] == inject::PORT_PROMETHEUS_NAME
            && p["targetPort"] == u64::from(inject::PORT_PROMETHEUS)));

    // The PodMonitor scrapes the port the injector names, and the pod's annotations agree.
    let pm = &docs(&k8s().join("monitoring/podmonitor.yaml"))[0];
    let pep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(s(pep, "/port"), inject::PORT_PROMETHEUS_NAME);
    assert_eq!(s(pep, "/path"), "/stats/prometheus");
    assert!(ports.iter().any(
        |(n, p)| n == inject::PORT_PROMETHEUS_NAME && *p == u64::from(inject::PORT_PROMETHEUS)
    ));
    let ann = &injected_dep["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        ann["prometheus.io/port"],
        inject::PORT_PROMETHEUS.to_string()
    );
    assert_eq!(ann["prometheus.io/path"], "/stats/prometheus");

    let k = &docs(&dir.join("kustomization.yaml"))[0];
    assert_eq!(k["namespace"], "chat");
    assert_eq!(
        s(&docs(&dir.join("namespace.yaml"))[0], "/metadata/name"),
        "chat"
    );
}

#[test]
fn the_webhook_manifests_point_at_each_other() {
    let dir = k8s().join("webhook");
    let mut all = Vec::new();
    for f in [
        "namespace.yaml",
        "serviceaccount.yaml",
        "certificate.yaml",
        "deployment.yaml",
        "service.yaml",
        "mutatingwebhook.yaml",
    ] {
        all.extend(docs(&dir.join(f)));
    }
    let ns = s(find(&all, "Namespace", "sluice-system"), "/metadata/name");
    let dep = find(&all, "Deployment", "sluice-webhook");
    let svc = find(&all, "Service", "sluice-webhook");
    let cert = find(&all, "Certificate", "sluice-webhook");
    let mwc = find(
        &all,
        "MutatingWebhookConfiguration",
        "sluice-sidecar-injector",
    );
    let sa = find(&all, "ServiceAccount", "sluice-webhook");
    assert_eq!(s(dep, "/metadata/namespace"), ns);
    assert_eq!(s(svc, "/metadata/namespace"), ns);
    assert_eq!(s(sa, "/metadata/namespace"), ns);
    let tmpl = &dep["spec"]["template"];
    assert!(selects(
        &dep["spec"]["selector"]["matchLabels"],
        &tmpl["metadata"]["labels"]
    ));
    assert!(selects(
        &svc["spec"]["selector"],
        &tmpl["metadata"]["labels"]
    ));
    // The injector never injects itself.
    assert_eq!(tmpl["metadata"]["labels"][inject::KEY_INJECT], "false");
    assert_eq!(s(tmpl, "/spec/serviceAccountName"), s(sa, "/metadata/name"));
    let c = &tmpl["spec"]["containers"][0];
    let ports = container_ports(&tmpl["spec"]);
    let target = s(&svc["spec"]["ports"][0], "/targetPort");
    assert!(ports.iter().any(|(n, _)| n == target));
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "inject-webhook");
    let flag = |f: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{f}=")))
            .unwrap_or_else(|| panic!("--{f} missing"))
    };
    let listen = port_of(flag("bind"));
    assert!(ports.iter().any(|(_, p)| *p == listen));
    // Certificate files come from the Secret cert-manager writes.
    let mount = s(&c["volumeMounts"][0], "/mountPath");
    assert!(flag("cert").starts_with(mount) && flag("key").starts_with(mount));
    let vol = &tmpl["spec"]["volumes"][0];
    assert_eq!(s(vol, "/name"), s(&c["volumeMounts"][0], "/name"));
    assert_eq!(s(vol, "/secret/secretName"), s(cert, "/spec/secretName"));
    let svc_dns = format!("{}.{ns}.svc", s(svc, "/metadata/name"));
    assert!(cert["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames")
        .iter()
        .any(|d| d == &Value::String(svc_dns.clone())));
    assert_eq!(
        s(mwc, "/metadata/annotations/cert-manager.io~1inject-ca-from"),
        format!("{ns}/{}", s(cert, "/metadata/name"))
    );
    let svc_port = svc["spec"]["ports"][0]["port"].as_u64().expect("port");
    let mut paths = Vec::new();
    for w in mwc["webhooks"].as_array().expect("webhooks") {
        let cc = &w["clientConfig"]["service"];
        assert_eq!(s(cc, "/name"), s(svc, "/metadata/name"));
        assert_eq!(s(cc, "/namespace"), ns);
        assert_eq!(cc["port"].as_u64(), Some(svc_port));
        assert_eq!(w["sideEffects"], "None");
        assert_eq!(w["rules"][0]["resources"][0], "pods");
        paths.push(s(cc, "/path").to_string());
    }
    paths.sort();
    assert_eq!(paths, ["/inject", "/inject/namespace"]);
}

#[test]
fn the_dashboard_configmap_is_the_dashboard() {
    let cm = &docs(&k8s().join("monitoring/grafana-dashboard.yaml"))[0];
    let json =
        std::fs::read_to_string(deploy().join("grafana/sluice-dashboard.json")).expect("read");
    assert_eq!(s(cm, "/data/sluice-dashboard.json"), json);
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let _: Value = serde_json::from_str(&json).expect("dashboard JSON");
}
