//! `deploy/`: every YAML file parses, every kustomization names files that exist, and the
//! Kubernetes manifests agree with each other and with the injector: Service selectors pick the
//! pods they are meant for, target ports exist, the monitors scrape the port and path the
//! sidecar serves, the webhook's Service, certificate and MutatingWebhookConfiguration point at
//! each other, the sidecar config loads with the real config loader, is transparent (outbound
//! on 15001, inbound on 15006, HTTPS interception with the CA the injector mounts) and uses the
//! Istio ports the injector probes and scrapes, and the generated files (the kustomize sidecar patch, the injected example, the dashboard ConfigMap)
//! are what the code generates today.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice::inject::{self, manifest, Options};
use sluice::transparent::{ListenerMode, ORIGINAL_DESTINATION};

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

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`) against `labels`.
fn selector_matches(sel: &Value, labels_v: &Value) -> bool {
    let l = labels(labels_v);
    let by_labels = labels(&sel["matchLabels"])
        .iter()
        .all(|(k, v)| l.get(k) == Some(v));
    let by_exprs = sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let v = l.get(key).map(String::as_str);
            match e["operator"].as_str() {
                Some("In") => v.is_some_and(|v| values.contains(&v)),
                Some("NotIn") => v.is_none_or(|v| !values.contains(&v)),
                Some("Exists") => v.is_some(),
                Some("DoesNotExist") => v.is_none(),
                other => panic!("unknown operator {other:?}"),
            }
        });
    by_labels && by_exprs
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

/// `sluice.yaml` as shipped in the sidecar ConfigMap.
fn shipped_sidecar_config() -> String {
    let cm = &docs(&k8s().join("sidecar/configmap.yaml"))[0];
    assert_eq!(s(cm, "/metadata/name"), inject::CONFIG_MAP_DEFAULT);
    s(cm, &format!("/data/{}", inject::CONFIG_FILE)).to_string()
}

/// The shipped config through the real config loader. The loader opens the interception CA
/// files, which in a pod are the Secret the injector mounts at `INTERCEPT_CA_MOUNT_DIR`; here
/// that directory (and only it) is replaced by one holding a CA made by `sluice ca init`.
fn load_sidecar_config() -> (sluice::config::Config, tempfile::TempDir) {
    let text = shipped_sidecar_config();
    let dir = tempfile::tempdir().expect("tempdir");
    sluice::tls::ca::cmd_init(dir.path(), "sluice.test", 1).expect("ca init");
    let adapted = text.replace(
        inject::INTERCEPT_CA_MOUNT_DIR,
        dir.path().to_str().expect("utf-8 path"),
    );
    let cfg = sluice::config::parse("sluice-config", &adapted).unwrap_or_else(|e| panic!("{e}"));
    (cfg, dir)
}

#[test]
fn sidecar_config_is_transparent_and_intercepts_with_the_mounted_ca() {
    let text = shipped_sidecar_config();
    // As shipped, the CA files are the injector's mount; without them the loader refuses the
    // config and names the field (so a pod without the Secret fails loudly, not silently).
    let ca_cert = format!(
        "{}/{}",
        inject::INTERCEPT_CA_MOUNT_DIR,
        inject::INTERCEPT_CA_CERT_FILE
    );
    let ca_key = format!(
        "{}/{}",
        inject::INTERCEPT_CA_MOUNT_DIR,
        inject::INTERCEPT_CA_KEY_FILE
    );
    assert!(text.contains(&ca_cert) && text.contains(&ca_key), "{text}");
    if !Path::new(&ca_cert).exists() {
        let e = sluice::config::parse("sluice-config", &text)
            .expect_err("CA files missing")
            .to_string();
        assert!(e.contains("intercept_ca_cert_file"), "{e}");
    }

    let (cfg, dir) = load_sidecar_config();
    let by_port = |port: u16| {
        cfg.listeners
            .iter()
            .find(|l| port_of(&l.bind.value) == u64::from(port))
            .unwrap_or_else(|| panic!("no listener on {port}"))
    };
    let out = by_port(inject::PORT_OUTBOUND);
    let inb = by_port(inject::PORT_INBOUND);
    assert_eq!(out.mode, ListenerMode::TransparentOutbound);
    assert_eq!(inb.mode, ListenerMode::TransparentInbound);
    // Nothing is explicit: the application never addresses the sidecar.
    assert!(cfg.listeners.iter().all(|l| l.mode.is_transparent()));
    // Redirected connections arrive on the pod's addresses: bind them all.
    for l in [out, inb] {
        let host = l.bind.value.rsplit_once(':').expect("host:port").0;
        assert!(matches!(host, "0.0.0.0" | "[::]"), "{}", l.bind.value);
    }

    // HTTPS to the providers is intercepted with the CA at the injector's mount point.
    let tls = out.tls.as_ref().expect("outbound tls (interception)");
    assert!(tls.is_intercept());
    let d = dir.path().to_str().expect("utf-8");
    assert_eq!(
        tls.intercept_ca_cert_file.as_ref().expect("cert").value,
        format!("{d}/{}", inject::INTERCEPT_CA_CERT_FILE)
    );
    assert_eq!(
        tls.intercept_ca_key_file.as_ref().expect("key").value,
        format!("{d}/{}", inject::INTERCEPT_CA_KEY_FILE)
    );
    let hosts: Vec<&str> = out
        .transparent
        .intercept_hosts
        .iter()
        .map(|h| h.value.as_str())
        .collect();
    for h in ["api.openai.com", "api.anthropic.com"] {
        assert!(hosts.contains(&h), "{hosts:?}");
    }
    // The real providers are verified against the system roots: no private upstream CA.
    assert!(out.transparent.intercept_upstream_ca_file.is_none());

    // Model calls go where the application sent them, inspected: intercepted HTTPS and plain
    // HTTP to in-cluster servers alike (OpenAI-style /v1/, TGI's /generate).
    for l in [out, inb] {
        assert!(!l.routes.is_empty(), "{}", l.name.value);
        for r in &l.routes {
            assert_eq!(r.upstream.value, ORIGINAL_DESTINATION, "{}", l.name.value);
            assert!(r.inspect.is_some(), "{}: uninspected route", l.name.value);
        }
    }
    let prefixes: Vec<&str> = out
        .routes
        .iter()
        .filter_map(|r| r.matcher.path_prefix.as_deref())
        .collect();
    assert!(prefixes.contains(&"/v1/") && prefixes.contains(&"/generate"));
    assert!(inb
        .routes
        .iter()
        .any(|r| r.matcher.path_prefix.as_deref() == Some("/v1/")));
    // No configured upstream is needed: everything goes to original destinations.
    assert!(cfg.upstreams.is_empty(), "{:?}", cfg.upstreams.keys());
}

#[test]
fn sidecar_config_is_valid_and_uses_the_istio_ports() {
    let (cfg, _dir) = load_sidecar_config();
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

    // The application does not know the sidecar: no base URL pointing at it, no port of it in
    // its code. It calls the SDK's default host, which the sidecar intercepts.
    let (cfg, _ca_dir) = load_sidecar_config();
    let env: BTreeMap<String, &Value> = app_c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (s(e, "/name").to_string(), e))
        .collect();
    assert!(!env.contains_key("OPENAI_BASE_URL"), "{env:?}");
    let code = s(find(&app, "ConfigMap", "chat-app-code"), "/data/app.py");
    assert!(code.contains("OpenAI()") && !code.contains("base_url"));
    assert!(!code.contains(&format!(":{}", inject::PORT_OUTBOUND)));
    let outbound = cfg
        .listeners
        .iter()
        .find(|l| port_of(&l.bind.value) == u64::from(inject::PORT_OUTBOUND))
        .expect("outbound listener");
    assert!(outbound
        .transparent
        .intercept_hosts
        .iter()
        .any(|h| h.value == "api.openai.com"));
    let app_port = app_c["ports"][0]["containerPort"].as_u64().expect("port");
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

    let injected_dep = find(&injected, "Deployment", "chat");
    let ispec = &injected_dep["spec"]["template"]["spec"];
    let init: BTreeMap<&str, &Value> = ispec["initContainers"]
        .as_array()
        .expect("initContainers")
        .iter()
        .map(|c| (s(c, "/name"), c))
        .collect();
    // Every outbound port is redirected (443 included: the HTTPS calls are intercepted), and
    // the application's port is redirected inbound.
    let args: Vec<&str> = init[inject::INIT_CONTAINER]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(!args.contains(&"--exclude-outbound-ports"), "{args:?}");
    assert!(!args.contains(&"--include-outbound-ports"), "{args:?}");
    let excluded_in = args[args
        .iter()
        .position(|a| *a == "--exclude-inbound-ports")
        .expect("--exclude-inbound-ports")
        + 1];
    assert!(!excluded_in.split(',').any(|p| p == app_port.to_string()));
    // The proxy mounts the CA Secret where the config reads it; the app gets the bundle.
    let proxy = init[inject::PROXY_CONTAINER];
    assert!(proxy["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["mountPath"] == inject::INTERCEPT_CA_MOUNT_DIR
            && m["name"] == inject::INTERCEPT_CA_VOLUME));
    let vol = ispec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == inject::INTERCEPT_CA_VOLUME)
        .expect("CA volume");
    assert_eq!(
        s(vol, "/secret/secretName"),
        inject::INTERCEPT_CA_SECRET_DEFAULT
    );
    assert!(init.contains_key(inject::TRUST_CONTAINER));
    let iapp = &ispec["containers"][0];
    let bundle = format!("{}/{}", inject::TRUST_MOUNT_DIR, inject::TRUST_BUNDLE_FILE);
    for var in inject::TRUST_ENV {
        assert!(
            iapp["env"]
                .as_array()
                .expect("env")
                .iter()
                .any(|e| e["name"] == var && e["value"] == bundle.as_str()),
            "{var}"
        );
    }
    assert!(!iapp.to_string().contains(inject::INTERCEPT_CA_MOUNT_DIR));

    // Services select the pods, and their target ports exist on the injected pods.
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
    // Each example pod is scraped exactly once: through its metrics Service (ServiceMonitor),
    // so the PodMonitor must leave it alone.
    assert!(!selector_matches(&pm["spec"]["selector"], tmpl_labels));
    let unlabelled = serde_json::json!({"app": "other"});
    assert!(selector_matches(&pm["spec"]["selector"], &unlabelled));
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
