//! Sidecar injection: turning a pod (or a workload's pod template) into one with sluice in
//! front of it, the way Istio's injector puts Envoy there.
//!
//! Owns: the one mutation ([`inject_pod`]) shared by both ways in:
//! * `sluice inject -f app.yaml` ([`manifest`]): rewrites manifests, like `istioctl kube-inject`;
//! * `sluice inject-webhook` ([`webhook`]): a mutating admission webhook that answers with an
//!   RFC 6902 JSON Patch ([`patch`]) computed as the difference between the pod it received and
//!   the pod [`inject_pod`] makes of it.
//!
//! What an injected pod gets (ports as in an Istio pod, so probes, scrape annotations and
//! PodMonitors written for the Envoy sidecar keep working):
//! * the `sluice-init` init container running `sluice iptables` (root, only `NET_ADMIN` and
//!   `NET_RAW`), which redirects the pod's TCP to 15001 (outbound) and 15006 (inbound), except
//!   the proxy's own UID 1337 and the proxy's health/metrics ports;
//! * the `sluice-proxy` container: a *native sidecar* by default (an `initContainers` entry with
//!   `restartPolicy: Always`, Kubernetes >= 1.29), placed right after `sluice-init` so it starts
//!   (its startup probe passes) before any later init container and the application, and is
//!   stopped only after the application has exited; or, with [`SidecarForm::Classic`] for older
//!   clusters, the first entry of `containers` with a `postStart` hook that waits until it is
//!   ready (Istio's `holdApplicationUntilProxyStarts`) and a `preStop` drain delay;
//! * UID/GID 1337, non-root, read-only root filesystem, every capability dropped;
//! * probes on 15021 (`/healthz/ready`), the 15090 port named `http-envoy-prom`, and the
//!   `prometheus.io/*` annotations pointing at `/stats/prometheus` on 15090 (only when the pod has
//!   no scrape annotation of its own);
//! * the config volume (a ConfigMap, `sluice-config` by default) mounted at `/etc/sluice`;
//! * with iptables interception, the means to intercept HTTPS (`transparent.intercept_hosts`):
//!   the interception CA Secret (`sluice-intercept-ca`, *optional*, so a pod whose config
//!   intercepts nothing starts without it) mounted into the proxy at
//!   `/var/run/sluice/intercept`; a `sluice-trust` init container (UID 1337, no capabilities)
//!   running `sluice ca bundle`, which writes the system roots plus the CA certificate (never
//!   the key) into a memory `emptyDir`; and in every application container that bundle at
//!   `/var/run/sluice/trust/ca-bundle.pem` with `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and
//!   `NODE_EXTRA_CA_CERTS` naming it (a variable the container already sets is left alone);
//! * the `sluice.dev/status: injected` annotation, which makes injection idempotent.
//!
//! Invariants:
//! * Idempotent: a pod that carries `sluice.dev/status` or already has a `sluice-proxy`
//!   container is returned unchanged ([`Outcome::Skipped`]), so injecting twice == once and a
//!   re-invoked webhook patches nothing.
//! * Never panics on input: every shape problem (a `containers` that is not a list, a bad
//!   annotation value) is an [`InjectError`] naming the field.
//! * Pods that opt out (`sluice.dev/inject: "false"` as a label or an annotation, or Istio's
//!   `sidecar.istio.io/inject: "false"`) and `hostNetwork` pods (iptables there would capture the
//!   node's traffic) are never changed.
//! * The application's own containers, init containers and volumes are kept as they are and in
//!   their order; only sluice's entries are added.
//!
//! Trade-offs: the mutation works on `serde_json::Value`, not on typed Kubernetes structs, so
//! fields this code does not know (new Kubernetes fields, CRD workloads' extra keys) survive a
//! round trip untouched, and no multi-megabyte Kubernetes API crate enters the build. Per-pod
//! settings come from annotations (`sluice.dev/*`, with Istio's `traffic.sidecar.istio.io/*` and
//! `sidecar.istio.io/proxyCPU`-style names accepted as aliases, so a migrated pod keeps its
//! settings); the options ([`Options`]) give the defaults.

pub mod manifest;
pub mod patch;
pub mod wait;
pub mod webhook;

use serde_json::{json, Map, Value};

use crate::error::{Classify, Side};

/// The proxy's UID and GID: excluded from redirection so its own traffic does not loop.
pub const PROXY_UID: u32 = 1337;
/// The transparent outbound listener (iptables redirects the pod's outgoing TCP here).
pub const PORT_OUTBOUND: u16 = 15001;
/// The transparent inbound listener (iptables redirects the pod's incoming TCP here).
pub const PORT_INBOUND: u16 = 15006;
/// The admin port (loopback only).
pub const PORT_ADMIN: u16 = 15000;
/// The health port: `/healthz/ready` (`admin.health_bind`).
pub const PORT_HEALTH: u16 = 15021;
/// The Prometheus port: `/stats/prometheus` (`admin.prometheus_bind`).
pub const PORT_PROMETHEUS: u16 = 15090;
/// Name of the Prometheus port; Istio's, so scrape configs keeping `.*-envoy-prom` work.
pub const PORT_PROMETHEUS_NAME: &str = "http-envoy-prom";
/// Name of the health port.
pub const PORT_HEALTH_NAME: &str = "sluice-health";

/// The sidecar container.
pub const PROXY_CONTAINER: &str = "sluice-proxy";
/// The init container that installs the iptables rules.
pub const INIT_CONTAINER: &str = "sluice-init";
/// The volume holding the sluice configuration.
pub const CONFIG_VOLUME: &str = "sluice-config";
/// Where the configuration volume is mounted.
pub const CONFIG_MOUNT_DIR: &str = "/etc/sluice";
/// The configuration file inside the ConfigMap (its key).
pub const CONFIG_FILE: &str = "sluice.yaml";
/// The default ConfigMap holding `sluice.yaml`, in the pod's namespace.
pub const CONFIG_MAP_DEFAULT: &str = "sluice-config";
/// Where the image keeps the binary (used by the lifecycle hooks, which need a path).
pub const BINARY_PATH: &str = "/usr/local/bin/sluice";
/// The init container that writes the application's trust bundle (`sluice ca bundle`).
pub const TRUST_CONTAINER: &str = "sluice-trust";
/// The volume holding the interception CA (a Secret with `ca.pem` and `ca-key.pem`).
pub const INTERCEPT_CA_VOLUME: &str = "sluice-intercept-ca";
/// The default Secret holding the interception CA, in the pod's namespace (optional).
pub const INTERCEPT_CA_SECRET_DEFAULT: &str = "sluice-intercept-ca";
/// Where the proxy (and `sluice-trust`) see the interception CA; the sidecar config's
/// `tls.intercept_ca_cert_file` / `intercept_ca_key_file` point here.
pub const INTERCEPT_CA_MOUNT_DIR: &str = "/var/run/sluice/intercept";
/// The CA certificate inside [`INTERCEPT_CA_MOUNT_DIR`] (the Secret's key; `sluice ca init`'s name).
pub const INTERCEPT_CA_CERT_FILE: &str = "ca.pem";
/// The CA key inside [`INTERCEPT_CA_MOUNT_DIR`] (only the proxy mounts it).
pub const INTERCEPT_CA_KEY_FILE: &str = "ca-key.pem";
/// The memory `emptyDir` holding the application's trust bundle.
pub const TRUST_VOLUME: &str = "sluice-trust";
/// Where the application containers see the trust bundle.
pub const TRUST_MOUNT_DIR: &str = "/var/run/sluice/trust";
/// The trust bundle: system roots plus the interception CA certificate.
pub const TRUST_BUNDLE_FILE: &str = "ca-bundle.pem";
/// Size limit of the trust `emptyDir` (the Mozilla roots are ~220 KB of PEM).
pub const TRUST_VOLUME_SIZE_LIMIT: &str = "4Mi";
/// Environment variables pointing the application's TLS clients at the trust bundle:
/// OpenSSL-based clients, Go, curl and httpx (the `openai` SDK); Python `requests`; Node
/// (added to its own roots).
pub const TRUST_ENV: [&str; 3] = ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"];
/// The default proxy image (built from `deploy/Dockerfile`).
pub const IMAGE_DEFAULT: &str = concat!("sluice:", env!("CARGO_PKG_VERSION"));

/// Label or annotation: `"true"` asks for injection, `"false"` opts out.
pub const KEY_INJECT: &str = "sluice.dev/inject";
/// Annotation marking an injected pod (the idempotency mark).
pub const KEY_STATUS: &str = "sluice.dev/status";
/// Value of [`KEY_STATUS`].
pub const STATUS_INJECTED: &str = "injected";
/// Istio's opt-out, honoured so that pods kept out of the Envoy mesh stay out of sluice's.
pub const KEY_ISTIO_INJECT: &str = "sidecar.istio.io/inject";

/// Default CPU request of the proxy.
pub const CPU_REQUEST_DEFAULT: &str = "100m";
/// Default memory request of the proxy.
pub const MEMORY_REQUEST_DEFAULT: &str = "64Mi";
/// Default memory limit of the proxy (no CPU limit by default: throttling a proxy adds
/// latency to every call; set `workers` in the config to the CPUs you grant it).
pub const MEMORY_LIMIT_DEFAULT: &str = "512Mi";
/// Classic form: how long the `preStop` hook keeps the proxy serving before it gets SIGTERM,
/// so the application's last calls still go out while it shuts down.
pub const DRAIN_DELAY_MS_DEFAULT: u64 = 5_000;
/// Classic form: the longest the `postStart` hook waits for the proxy to become ready.
pub const READY_WAIT_TIMEOUT_MS_DEFAULT: u64 = 120_000;
/// Startup probe period (seconds) and failures allowed: up to 10 minutes to start, checked
/// every second, as Istio's sidecar does.
pub const STARTUP_PROBE_PERIOD_S: u32 = 1;
pub const STARTUP_PROBE_FAILURES_MAX: u32 = 600;
/// Readiness probe period (seconds) and failures allowed.
pub const READINESS_PROBE_PERIOD_S: u32 = 15;
pub const READINESS_PROBE_FAILURES_MAX: u32 = 4;
/// Probe timeout (seconds).
pub const PROBE_TIMEOUT_S: u32 = 3;
/// Longest annotation value parsed as a list (ports, CIDRs): bounds work on hostile input.
pub const ANNOTATION_LIST_ITEMS_MAX: usize = 256;

/// Ports that must never be redirected inbound: the proxy's own health, metrics and admin
/// ports, which the kubelet and Prometheus reach directly.
pub const INBOUND_PORTS_ALWAYS_EXCLUDED: [u16; 3] = [PORT_ADMIN, PORT_HEALTH, PORT_PROMETHEUS];

/// Where the sidecar goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarForm {
    /// `initContainers` entry with `restartPolicy: Always` (Kubernetes >= 1.29).
    Native,
    /// First entry of `containers`, for older clusters.
    Classic,
}

/// How traffic reaches the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// `sluice iptables` in an init container redirects the pod's TCP (transparent).
    Iptables,
    /// No redirection: the application addresses the proxy (`http://127.0.0.1:15001`). No
    /// privileged init container at all.
    None,
}

/// Which pods are injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every pod that does not opt out (`sluice inject`, namespace-wide webhook).
    Default,
    /// Only pods that ask with `sluice.dev/inject: "true"` (label or annotation).
    Explicit,
}

/// Injection defaults; per-pod annotations override them.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    /// `imagePullPolicy` of the injected containers; unset leaves Kubernetes' default.
    pub image_pull_policy: Option<String>,
    pub config_map: String,
    pub form: SidecarForm,
    pub interception: Interception,
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub drain_delay_ms: u64,
    /// Also redirect IPv6 (`sluice iptables --ipv6`; the image needs `ip6tables`).
    pub ipv6: bool,
    /// Secret with the interception CA, or `None`: no CA volume, no trust bundle, no trust
    /// environment (applies only with [`Interception::Iptables`]).
    pub intercept_ca_secret: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: IMAGE_DEFAULT.to_string(),
            image_pull_policy: None,
            config_map: CONFIG_MAP_DEFAULT.to_string(),
            form: SidecarForm::Native,
            interception: Interception::Iptables,
            cpu_request: CPU_REQUEST_DEFAULT.to_string(),
            memory_request: MEMORY_REQUEST_DEFAULT.to_string(),
            cpu_limit: None,
            memory_limit: Some(MEMORY_LIMIT_DEFAULT.to_string()),
            drain_delay_ms: DRAIN_DELAY_MS_DEFAULT,
            ipv6: false,
            intercept_ca_secret: Some(INTERCEPT_CA_SECRET_DEFAULT.to_string()),
        }
    }
}

/// The injection options on the command line (`sluice inject`, `sluice inject-webhook`).
#[derive(Debug, Clone, clap::Args)]
pub struct OptionsArgs {
    /// Proxy image, for the sidecar and the iptables init container.
    #[arg(long, default_value = IMAGE_DEFAULT)]
    pub image: String,
    /// `imagePullPolicy` of the injected containers (Kubernetes' default when unset).
    #[arg(long)]
    pub image_pull_policy: Option<String>,
    /// ConfigMap (in the pod's namespace) holding `sluice.yaml`.
    #[arg(long, default_value = CONFIG_MAP_DEFAULT)]
    pub config_map: String,
    /// Inject the classic sidecar (first entry of `containers`) instead of a native sidecar
    /// (`initContainers` with `restartPolicy: Always`), for Kubernetes < 1.29.
    #[arg(long)]
    pub classic_sidecar: bool,
    /// `iptables` (transparent, the `sluice iptables` init container) or `none` (the
    /// application addresses the proxy itself; no privileged init container).
    #[arg(long, default_value = "iptables", value_parser = ["iptables", "none"])]
    pub interception: String,
    /// CPU request of the proxy.
    #[arg(long, default_value = CPU_REQUEST_DEFAULT)]
    pub cpu_request: String,
    /// Memory request of the proxy.
    #[arg(long, default_value = MEMORY_REQUEST_DEFAULT)]
    pub memory_request: String,
    /// CPU limit of the proxy (none by default).
    #[arg(long)]
    pub cpu_limit: Option<String>,
    /// Memory limit of the proxy (`none` for no limit).
    #[arg(long, default_value = MEMORY_LIMIT_DEFAULT)]
    pub memory_limit: String,
    /// Classic sidecar: how long `preStop` keeps the proxy serving before SIGTERM.
    #[arg(long, default_value_t = DRAIN_DELAY_MS_DEFAULT)]
    pub drain_delay_ms: u64,
    /// Also redirect IPv6 traffic (`sluice iptables --ipv6`), for dual-stack pods.
    #[arg(long)]
    pub ipv6: bool,
    /// Secret (in the pod's namespace, optional) with the TLS interception CA (`ca.pem`,
    /// `ca-key.pem`): mounted into the proxy, its certificate added to the application's trust
    /// bundle. `none`: no CA volume, trust bundle or trust environment variables.
    #[arg(long, default_value = INTERCEPT_CA_SECRET_DEFAULT)]
    pub intercept_ca_secret: String,
}

impl OptionsArgs {
    /// Validate into [`Options`].
    pub fn into_options(self) -> Result<Options, InjectError> {
        for (f, v) in [
            ("--cpu-request", Some(&self.cpu_request)),
            ("--memory-request", Some(&self.memory_request)),
            ("--cpu-limit", self.cpu_limit.as_ref()),
            (
                "--memory-limit",
                Some(&self.memory_limit).filter(|m| *m != "none"),
            ),
        ] {
            if let Some(v) = v {
                check_quantity(v, f)?;
            }
        }
        if !is_dns_subdomain(&self.config_map) {
            return Err(InjectError::invalid("--config-map", "not a ConfigMap name"));
        }
        if self.intercept_ca_secret != "none" && !is_dns_subdomain(&self.intercept_ca_secret) {
            return Err(InjectError::invalid(
                "--intercept-ca-secret",
                "not a Secret name (or `none`)",
            ));
        }
        if let Some(p) = &self.image_pull_policy {
            if !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never") {
                return Err(InjectError::invalid(
                    "--image-pull-policy",
                    "not Always, IfNotPresent or Never",
                ));
            }
        }
        if self.drain_delay_ms > wait::DRAIN_DELAY_MS_MAX {
            return Err(InjectError::invalid(
                "--drain-delay-ms",
                "longer than an hour",
            ));
        }
        Ok(Options {
            image: self.image,
            image_pull_policy: self.image_pull_policy,
            config_map: self.config_map,
            form: if self.classic_sidecar {
                SidecarForm::Classic
            } else {
                SidecarForm::Native
            },
            interception: if self.interception == "none" {
                Interception::None
            } else {
                Interception::Iptables
            },
            cpu_request: self.cpu_request,
            memory_request: self.memory_request,
            cpu_limit: self.cpu_limit,
            memory_limit: (self.memory_limit != "none").then_some(self.memory_limit),
            drain_delay_ms: self.drain_delay_ms,
            ipv6: self.ipv6,
            intercept_ca_secret: (self.intercept_ca_secret != "none")
                .then_some(self.intercept_ca_secret),
        })
    }
}

/// What [`inject_pod`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(Skip),
}

/// Why a pod was left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// It already carries the sidecar.
    AlreadyInjected,
    /// A label or annotation opts it out (the key is given).
    OptedOut(String),
    /// `hostNetwork: true`.
    HostNetwork,
    /// [`Policy::Explicit`] and it did not ask.
    NotRequested,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Skip::AlreadyInjected => f.write_str("already injected"),
            Skip::OptedOut(k) => write!(f, "opted out by {k}"),
            Skip::HostNetwork => f.write_str("hostNetwork pod"),
            Skip::NotRequested => write!(f, "not requested ({KEY_INJECT} is not \"true\")"),
        }
    }
}

/// Errors of injection: bad manifests and bad annotations (the caller's), or YAML output
/// failing (ours).
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("invalid YAML: {0}")]
    Parse(String),
    #[error("document {doc}: {problem}")]
    Yaml { doc: usize, problem: String },
    #[error("cannot write YAML: {0}")]
    Emit(String),
}

impl InjectError {
    fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        InjectError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl Classify for InjectError {
    fn side(&self) -> Side {
        match self {
            InjectError::Invalid { .. } | InjectError::Yaml { .. } | InjectError::Parse(_) => {
                Side::Downstream
            }
            InjectError::Emit(_) => Side::Internal,
        }
    }
    fn status(&self) -> u16 {
        match self.side() {
            Side::Downstream => 400,
            _ => 500,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            InjectError::Invalid { .. } => "invalid_pod",
            InjectError::Yaml { .. } | InjectError::Parse(_) => "invalid_yaml",
            InjectError::Emit(_) => "yaml_emit_failed",
        }
    }
}

/// The settings for one pod: [`Options`] with the pod's annotations applied.
#[derive(Debug, Clone)]
struct Settings {
    image: String,
    image_pull_policy: Option<String>,
    config_map: String,
    form: SidecarForm,
    interception: Interception,
    cpu_request: String,
    memory_request: String,
    cpu_limit: Option<String>,
    memory_limit: Option<String>,
    drain_delay_ms: u64,
    include_outbound_cidrs: Option<String>,
    exclude_outbound_cidrs: Option<String>,
    exclude_outbound_ports: Option<String>,
    include_inbound_ports: Option<String>,
    exclude_inbound_ports: String,
    ipv6: bool,
    intercept_ca_secret: Option<String>,
}

impl Settings {
    /// Whether the pod gets the interception CA and the application's trust bundle: only when
    /// its traffic is redirected (without iptables nothing is intercepted transparently).
    fn trust(&self) -> bool {
        self.interception == Interception::Iptables && self.intercept_ca_secret.is_some()
    }
}

/// Inject the sidecar into `pod`: a Pod, or a pod template (`{metadata, spec}`).
///
/// `path` names `pod` in error messages (`spec.template`, `Deployment/web`).
pub fn inject_pod(
    pod: &mut Value,
    opts: &Options,
    policy: Policy,
    path: &str,
) -> Result<Outcome, InjectError> {
    let Some(obj) = pod.as_object_mut() else {
        return Err(InjectError::invalid(path, "not an object"));
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        return Err(InjectError::invalid(
            format!("{path}.metadata"),
            "not an object",
        ));
    }
    let labels = string_map(meta.get("labels"), &format!("{path}.metadata.labels"))?;
    let annotations = string_map(
        meta.get("annotations"),
        &format!("{path}.metadata.annotations"),
    )?;
    let Some(spec) = obj.get("spec") else {
        return Err(InjectError::invalid(format!("{path}.spec"), "missing"));
    };
    let Some(spec_obj) = spec.as_object() else {
        return Err(InjectError::invalid(
            format!("{path}.spec"),
            "not an object",
        ));
    };

    // Idempotency first: an injected pod is never touched again, whatever else it says.
    if annotations.contains_key(KEY_STATUS)
        || has_container(spec_obj, "containers", PROXY_CONTAINER)
        || has_container(spec_obj, "initContainers", PROXY_CONTAINER)
    {
        return Ok(Outcome::Skipped(Skip::AlreadyInjected));
    }
    let mut requested = false;
    for (what, m) in [("label", &labels), ("annotation", &annotations)] {
        for key in [KEY_INJECT, KEY_ISTIO_INJECT] {
            let Some(v) = m.get(key) else { continue };
            match parse_bool(v) {
                Some(false) => {
                    return Ok(Outcome::Skipped(Skip::OptedOut(format!("{what} {key}"))))
                }
                Some(true) => requested |= key == KEY_INJECT,
                None if key == KEY_INJECT => {
                    return Err(InjectError::invalid(
                        format!("{path}.metadata.{what}s.{key}"),
                        format!("`{v}` is not \"true\" or \"false\""),
                    ))
                }
                None => {}
            }
        }
    }
    if spec_obj.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped(Skip::HostNetwork));
    }
    if policy == Policy::Explicit && !requested {
        return Ok(Outcome::Skipped(Skip::NotRequested));
    }
    for key in ["containers", "initContainers"] {
        if has_container(spec_obj, key, INIT_CONTAINER) {
            return Err(InjectError::invalid(
                format!("{path}.spec.{key}"),
                format!(
                    "a container is already named `{INIT_CONTAINER}` (but no `{PROXY_CONTAINER}`)"
                ),
            ));
        }
    }
    for key in ["containers", "initContainers", "volumes"] {
        if let Some(v) = spec_obj.get(key) {
            if !v.is_array() && !v.is_null() {
                return Err(InjectError::invalid(
                    format!("{path}.spec.{key}"),
                    "not a list",
                ));
            }
        }
    }
    if spec_obj
        .get("containers")
        .and_then(Value::as_array)
        .is_none_or(|c| c.is_empty())
    {
        return Err(InjectError::invalid(
            format!("{path}.spec.containers"),
            "a pod needs at least one container",
        ));
    }
    let s = settings(opts, &annotations, path)?;
    if s.trust() {
        check_trust_targets(spec_obj, path)?;
    }
    let first_app = spec_obj
        .get("containers")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .and_then(|c| c.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string);

    // Mutate. Every shape was checked above, so the lookups below cannot fail on input.
    let mut added_annotations: Vec<(&str, String)> = vec![(KEY_STATUS, STATUS_INJECTED.into())];
    if !annotations.contains_key("prometheus.io/scrape") {
        added_annotations.push(("prometheus.io/scrape", "true".into()));
        added_annotations.push(("prometheus.io/port", PORT_PROMETHEUS.to_string()));
        added_annotations.push(("prometheus.io/path", "/stats/prometheus".into()));
    }
    if let Some(app) = first_app {
        if !annotations.contains_key("kubectl.kubernetes.io/default-container") {
            added_annotations.push(("kubectl.kubernetes.io/default-container", app));
        }
    }
    let meta = obj
        .get_mut("metadata")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| InjectError::invalid(format!("{path}.metadata"), "not an object"))?;
    let ann = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if ann.is_null() {
        *ann = Value::Object(Map::new());
    }
    if let Some(ann) = ann.as_object_mut() {
        for (k, v) in added_annotations {
            ann.insert(k.to_string(), Value::String(v));
        }
    }

    let spec = obj
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| InjectError::invalid(format!("{path}.spec"), "not an object"))?;
    // The application's own containers first (sluice's are not in the lists yet).
    if s.trust() {
        for key in ["containers", "initContainers"] {
            for c in list_mut(spec, key).iter_mut() {
                add_trust(c);
            }
        }
    }
    let proxy = proxy_container(&s);
    let mut init_front: Vec<Value> = Vec::new();
    if s.interception == Interception::Iptables {
        init_front.push(init_container(&s));
    }
    if s.trust() {
        init_front.push(trust_container(&s));
    }
    match s.form {
        SidecarForm::Native => init_front.push(proxy),
        SidecarForm::Classic => {
            list_mut(spec, "containers").insert(0, proxy);
        }
    }
    if !init_front.is_empty() {
        let init = list_mut(spec, "initContainers");
        let rest = std::mem::take(init);
        init.extend(init_front);
        init.extend(rest);
    }
    // A pod that already has a `sluice-config` volume (its own ConfigMap or Secret) keeps it:
    // the proxy mounts that one.
    let volumes = list_mut(spec, "volumes");
    if !volumes
        .iter()
        .any(|v| v.get("name").and_then(Value::as_str) == Some(CONFIG_VOLUME))
    {
        volumes.push(json!({
            "name": CONFIG_VOLUME,
            "configMap": {"name": s.config_map},
        }));
    }
    if let (true, Some(secret)) = (s.trust(), &s.intercept_ca_secret) {
        // Optional: a namespace whose config intercepts nothing needs no Secret; the proxy
        // refuses a config that names CA files that are not there, with the file named.
        for (name, vol) in [
            (
                INTERCEPT_CA_VOLUME,
                json!({"secret": {"secretName": secret, "optional": true}}),
            ),
            (
                TRUST_VOLUME,
                json!({"emptyDir": {"medium": "Memory", "sizeLimit": TRUST_VOLUME_SIZE_LIMIT}}),
            ),
        ] {
            if !volumes
                .iter()
                .any(|v| v.get("name").and_then(Value::as_str) == Some(name))
            {
                let mut v = Map::new();
                v.insert("name".into(), json!(name));
                if let Value::Object(m) = vol {
                    v.extend(m);
                }
                volumes.push(Value::Object(v));
            }
        }
    }
    Ok(Outcome::Injected)
}

/// `spec[key]` as a mutable list, created (or a `null` replaced) when missing.
fn list_mut<'a>(spec: &'a mut Map<String, Value>, key: &str) -> &'a mut Vec<Value> {
    let v = spec
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !v.is_array() {
        *v = Value::Array(Vec::new());
    }
    match v {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

fn has_container(spec: &Map<String, Value>, key: &str, name: &str) -> bool {
    spec.get(key).and_then(Value::as_array).is_some_and(|cs| {
        cs.iter()
            .any(|c| c.get("name").and_then(Value::as_str) == Some(name))
    })
}

/// A labels/annotations map; values that are not strings are an error (Kubernetes would
/// reject them too), a missing or `null` map is empty.
fn string_map(
    v: Option<&Value>,
    field: &str,
) -> Result<std::collections::BTreeMap<String, String>, InjectError> {
    let mut out = std::collections::BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => {
                        out.insert(k.clone(), s.clone());
                    }
                    // YAML `true`/`5` unquoted: Kubernetes refuses these; be as clear.
                    other => {
                        return Err(InjectError::invalid(
                            format!("{field}.{k}"),
                            format!("`{other}` must be a string (quote it)"),
                        ))
                    }
                }
            }
        }
        Some(_) => return Err(InjectError::invalid(field, "not a map")),
    }
    Ok(out)
}

fn parse_bool(v: &str) -> Option<bool> {
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("enabled") {
        Some(true)
    } else if v.eq_ignore_ascii_case("false") || v.eq_ignore_ascii_case("disabled") {
        Some(false)
    } else {
        None
    }
}

/// The first of `keys` present in `ann`, with its key.
fn annotation<'a>(
    ann: &'a std::collections::BTreeMap<String, String>,
    keys: &[&'static str],
) -> Option<(&'static str, &'a str)> {
    keys.iter()
        .find_map(|k| ann.get(*k).map(|v| (*k, v.trim())))
}

fn settings(
    opts: &Options,
    ann: &std::collections::BTreeMap<String, String>,
    path: &str,
) -> Result<Settings, InjectError> {
    let field = |k: &str| format!("{path}.metadata.annotations.{k}");
    let mut s = Settings {
        image: opts.image.clone(),
        image_pull_policy: opts.image_pull_policy.clone(),
        config_map: opts.config_map.clone(),
        form: opts.form,
        interception: opts.interception,
        cpu_request: opts.cpu_request.clone(),
        memory_request: opts.memory_request.clone(),
        cpu_limit: opts.cpu_limit.clone(),
        memory_limit: opts.memory_limit.clone(),
        drain_delay_ms: opts.drain_delay_ms,
        include_outbound_cidrs: None,
        exclude_outbound_cidrs: None,
        exclude_outbound_ports: None,
        include_inbound_ports: None,
        exclude_inbound_ports: String::new(),
        ipv6: opts.ipv6,
        intercept_ca_secret: opts.intercept_ca_secret.clone(),
    };
    if let Some((k, v)) = annotation(ann, &["sluice.dev/interceptCASecret"]) {
        s.intercept_ca_secret = match v {
            "none" => None,
            v if is_dns_subdomain(v) => Some(v.to_string()),
            v => {
                return Err(InjectError::invalid(
                    field(k),
                    format!("`{v}` is not a Secret name (or `none`)"),
                ))
            }
        };
    }
    if let Some((k, v)) = annotation(ann, &["sluice.dev/ipv6"]) {
        s.ipv6 = parse_bool(v).ok_or_else(|| {
            InjectError::invalid(field(k), format!("`{v}` is not \"true\" or \"false\""))
        })?;
    }
    if let Some((k, v)) = annotation(
        ann,
        &["sluice.dev/proxyImage", "sidecar.istio.io/proxyImage"],
    ) {
        if v.is_empty() || v.chars().any(char::is_whitespace) {
            return Err(InjectError::invalid(field(k), "not an image reference"));
        }
        s.image = v.to_string();
    }
    if let Some((k, v)) = annotation(ann, &["sluice.dev/configMap"]) {
        if !is_dns_subdomain(v) {
            return Err(InjectError::invalid(
                field(k),
                format!("`{v}` is not a ConfigMap name"),
            ));
        }
        s.config_map = v.to_string();
    }
    if let Some((k, v)) = annotation(ann, &["sluice.dev/nativeSidecar"]) {
        s.form = match parse_bool(v) {
            Some(true) => SidecarForm::Native,
            Some(false) => SidecarForm::Classic,
            None => {
                return Err(InjectError::invalid(
                    field(k),
                    format!("`{v}` is not \"true\" or \"false\""),
                ))
            }
        };
    }
    if let Some((k, v)) = annotation(ann, &["sluice.dev/interception"]) {
        s.interception = match v {
            "iptables" => Interception::Iptables,
            "none" => Interception::None,
            _ => {
                return Err(InjectError::invalid(
                    field(k),
                    format!("`{v}` is not `iptables` or `none`"),
                ))
            }
        };
    }
    for (keys, slot) in [
        (
            ["sluice.dev/proxyCPU", "sidecar.istio.io/proxyCPU"],
            &mut s.cpu_request,
        ),
        (
            ["sluice.dev/proxyMemory", "sidecar.istio.io/proxyMemory"],
            &mut s.memory_request,
        ),
    ] {
        if let Some((k, v)) = annotation(ann, &keys) {
            check_quantity(v, &field(k))?;
            *slot = v.to_string();
        }
    }
    for (keys, slot) in [
        (
            ["sluice.dev/proxyCPULimit", "sidecar.istio.io/proxyCPULimit"],
            &mut s.cpu_limit,
        ),
        (
            [
                "sluice.dev/proxyMemoryLimit",
                "sidecar.istio.io/proxyMemoryLimit",
            ],
            &mut s.memory_limit,
        ),
    ] {
        if let Some((k, v)) = annotation(ann, &keys) {
            check_quantity(v, &field(k))?;
            *slot = Some(v.to_string());
        }
    }
    if let Some((k, v)) = annotation(ann, &["sluice.dev/drainDelayMs"]) {
        s.drain_delay_ms = v
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= 3_600_000)
            .ok_or_else(|| InjectError::invalid(field(k), format!("`{v}` is not 0..=3600000")))?;
    }
    if let Some((k, v)) = annotation(
        ann,
        &[
            "sluice.dev/includeOutboundIPRanges",
            "traffic.sidecar.istio.io/includeOutboundIPRanges",
        ],
    ) {
        s.include_outbound_cidrs = Some(cidr_list(v, true, &field(k))?);
    }
    if let Some((k, v)) = annotation(
        ann,
        &[
            "sluice.dev/excludeOutboundIPRanges",
            "traffic.sidecar.istio.io/excludeOutboundIPRanges",
        ],
    ) {
        s.exclude_outbound_cidrs = Some(cidr_list(v, false, &field(k))?);
    }
    if let Some((k, v)) = annotation(
        ann,
        &[
            "sluice.dev/excludeOutboundPorts",
            "traffic.sidecar.istio.io/excludeOutboundPorts",
        ],
    ) {
        s.exclude_outbound_ports = Some(port_list(v, false, &field(k))?);
    }
    if let Some((k, v)) = annotation(
        ann,
        &[
            "sluice.dev/includeInboundPorts",
            "traffic.sidecar.istio.io/includeInboundPorts",
        ],
    ) {
        s.include_inbound_ports = Some(port_list(v, true, &field(k))?);
    }
    let mut excluded: Vec<String> = INBOUND_PORTS_ALWAYS_EXCLUDED
        .iter()
        .map(u16::to_string)
        .collect();
    if let Some((k, v)) = annotation(
        ann,
        &[
            "sluice.dev/excludeInboundPorts",
            "traffic.sidecar.istio.io/excludeInboundPorts",
        ],
    ) {
        for p in port_list(v, false, &field(k))?.split(',') {
            if !p.is_empty() && !excluded.iter().any(|e| e == p) {
                excluded.push(p.to_string());
            }
        }
    }
    s.exclude_inbound_ports = excluded.join(",");
    Ok(s)
}

/// A comma-separated list of ports, normalized (no spaces). `*` is allowed when `star`.
fn port_list(v: &str, star: bool, field: &str) -> Result<String, InjectError> {
    if star && v == "*" {
        return Ok("*".into());
    }
    let mut out = Vec::new();
    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if out.len() >= ANNOTATION_LIST_ITEMS_MAX {
            return Err(InjectError::invalid(
                field,
                format!("more than {ANNOTATION_LIST_ITEMS_MAX} entries"),
            ));
        }
        match p.parse::<u16>() {
            Ok(n) if n > 0 => out.push(n.to_string()),
            _ => {
                return Err(InjectError::invalid(
                    field,
                    format!("`{p}` is not a port (1..=65535)"),
                ))
            }
        }
    }
    Ok(out.join(","))
}

/// A comma-separated list of CIDRs (`10.0.0.0/8`, `fd00::/8`, or a bare address), normalized.
/// `*` (everything) is allowed when `star`.
fn cidr_list(v: &str, star: bool, field: &str) -> Result<String, InjectError> {
    if star && v == "*" {
        return Ok("*".into());
    }
    let mut out = Vec::new();
    for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        if out.len() >= ANNOTATION_LIST_ITEMS_MAX {
            return Err(InjectError::invalid(
                field,
                format!("more than {ANNOTATION_LIST_ITEMS_MAX} entries"),
            ));
        }
        let (ip, len) = match c.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (c, None),
        };
        let ok = match ip.parse::<std::net::IpAddr>() {
            Ok(addr) => {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                len.is_none_or(|l| l.parse::<u8>().is_ok_and(|l| l <= max))
            }
            Err(_) => false,
        };
        if !ok {
            return Err(InjectError::invalid(
                field,
                format!("`{c}` is not an address or CIDR"),
            ));
        }
        out.push(c.to_string());
    }
    Ok(out.join(","))
}

/// A Kubernetes resource quantity (`100m`, `0.5`, `128Mi`, `1G`, `1e3`).
fn check_quantity(v: &str, field: &str) -> Result<(), InjectError> {
    const SUFFIXES: [&str; 14] = [
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P",
    ];
    let bad = || InjectError::invalid(field, format!("`{v}` is not a resource quantity"));
    let mut num = v;
    if let Some(s) = SUFFIXES.iter().find(|s| v.ends_with(**s)) {
        num = &v[..v.len() - s.len()];
    } else if let Some(s) = v.strip_suffix('E') {
        num = s;
    } else if let Some((m, e)) = v.split_once(['e', 'E']) {
        if e.trim_start_matches(['+', '-']).parse::<u32>().is_err() {
            return Err(bad());
        }
        num = m;
    }
    let digits_dot = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && s.bytes().filter(|b| *b == b'.').count() <= 1
            && s != "."
    };
    if v.len() > 32 || !digits_dot(num) {
        return Err(bad());
    }
    Ok(())
}

/// An RFC 1123 DNS subdomain (ConfigMap names).
fn is_dns_subdomain(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// Before mutating: every application container is an object whose `env` and `volumeMounts`
/// (when present) are lists, so [`add_trust`] cannot meet a shape it would have to guess at.
fn check_trust_targets(spec: &Map<String, Value>, path: &str) -> Result<(), InjectError> {
    for key in ["containers", "initContainers"] {
        for (i, c) in spec
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let f = format!("{path}.spec.{key}[{i}]");
            let Some(c) = c.as_object() else {
                return Err(InjectError::invalid(f, "not an object"));
            };
            for list in ["env", "volumeMounts"] {
                if let Some(v) = c.get(list) {
                    if !v.is_array() && !v.is_null() {
                        return Err(InjectError::invalid(format!("{f}.{list}"), "not a list"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Point one application container at the trust bundle: mount it and set the trust
/// variables, leaving alone a mount of the same name or path and any variable already set.
fn add_trust(c: &mut Value) {
    let Some(c) = c.as_object_mut() else { return };
    let bundle = format!("{TRUST_MOUNT_DIR}/{TRUST_BUNDLE_FILE}");
    let env = list_mut(c, "env");
    for name in TRUST_ENV {
        if !env
            .iter()
            .any(|e| e.get("name").and_then(Value::as_str) == Some(name))
        {
            env.push(json!({"name": name, "value": bundle}));
        }
    }
    let mounts = list_mut(c, "volumeMounts");
    if !mounts.iter().any(|m| {
        m.get("name").and_then(Value::as_str) == Some(TRUST_VOLUME)
            || m.get("mountPath").and_then(Value::as_str) == Some(TRUST_MOUNT_DIR)
    }) {
        mounts.push(json!({"name": TRUST_VOLUME, "mountPath": TRUST_MOUNT_DIR, "readOnly": true}));
    }
}

/// The `sluice-trust` init container: writes the application's trust bundle (system roots
/// plus the interception CA certificate) into the trust `emptyDir`.
fn trust_container(s: &Settings) -> Value {
    let mut c = Map::new();
    c.insert("name".into(), json!(TRUST_CONTAINER));
    c.insert("image".into(), json!(s.image));
    if let Some(p) = &s.image_pull_policy {
        c.insert("imagePullPolicy".into(), json!(p));
    }
    c.insert(
        "args".into(),
        json!([
            "ca",
            "bundle",
            "--ca-cert",
            format!("{INTERCEPT_CA_MOUNT_DIR}/{INTERCEPT_CA_CERT_FILE}"),
            "--out",
            format!("{TRUST_MOUNT_DIR}/{TRUST_BUNDLE_FILE}"),
            "--optional",
        ]),
    );
    c.insert(
        "resources".into(),
        json!({
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        }),
    );
    c.insert("securityContext".into(), proxy_security_context());
    c.insert(
        "volumeMounts".into(),
        json!([
            {"name": INTERCEPT_CA_VOLUME, "mountPath": INTERCEPT_CA_MOUNT_DIR, "readOnly": true},
            {"name": TRUST_VOLUME, "mountPath": TRUST_MOUNT_DIR},
        ]),
    );
    c.insert(
        "terminationMessagePolicy".into(),
        json!("FallbackToLogsOnError"),
    );
    Value::Object(c)
}

/// UID/GID 1337 (never redirected), non-root, read-only root filesystem, no capabilities.
fn proxy_security_context() -> Value {
    json!({
        "runAsUser": PROXY_UID,
        "runAsGroup": PROXY_UID,
        "runAsNonRoot": true,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn http_probe(path: &str, period_s: u32, failures: u32) -> Value {
    json!({
        "httpGet": {"path": path, "port": PORT_HEALTH},
        "periodSeconds": period_s,
        "timeoutSeconds": PROBE_TIMEOUT_S,
        "failureThreshold": failures,
    })
}

fn proxy_container(s: &Settings) -> Value {
    let mut requests = Map::new();
    requests.insert("cpu".into(), json!(s.cpu_request));
    requests.insert("memory".into(), json!(s.memory_request));
    let mut limits = Map::new();
    if let Some(c) = &s.cpu_limit {
        limits.insert("cpu".into(), json!(c));
    }
    if let Some(m) = &s.memory_limit {
        limits.insert("memory".into(), json!(m));
    }
    let mut resources = Map::new();
    resources.insert("requests".into(), Value::Object(requests));
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }
    let mut c = Map::new();
    c.insert("name".into(), json!(PROXY_CONTAINER));
    c.insert("image".into(), json!(s.image));
    if let Some(p) = &s.image_pull_policy {
        c.insert("imagePullPolicy".into(), json!(p));
    }
    c.insert(
        "args".into(),
        json!([
            "run",
            "--config",
            format!("{CONFIG_MOUNT_DIR}/{CONFIG_FILE}")
        ]),
    );
    if s.form == SidecarForm::Native {
        c.insert("restartPolicy".into(), json!("Always"));
    }
    c.insert(
        "env".into(),
        json!([{"name": "SLUICE_LOG_FORMAT", "value": "json"}]),
    );
    c.insert(
        "ports".into(),
        json!([
            {"name": PORT_PROMETHEUS_NAME, "containerPort": PORT_PROMETHEUS, "protocol": "TCP"},
            {"name": PORT_HEALTH_NAME, "containerPort": PORT_HEALTH, "protocol": "TCP"},
        ]),
    );
    c.insert(
        "startupProbe".into(),
        http_probe(
            "/healthz/ready",
            STARTUP_PROBE_PERIOD_S,
            STARTUP_PROBE_FAILURES_MAX,
        ),
    );
    c.insert(
        "readinessProbe".into(),
        http_probe(
            "/healthz/ready",
            READINESS_PROBE_PERIOD_S,
            READINESS_PROBE_FAILURES_MAX,
        ),
    );
    if s.form == SidecarForm::Classic {
        // Native sidecars need neither hook: the kubelet starts the application only after
        // the startup probe passed, and stops the proxy only after the application exited.
        c.insert(
            "lifecycle".into(),
            json!({
                "postStart": {"exec": {"command": [
                    BINARY_PATH, "wait-ready",
                    "--timeout-ms", READY_WAIT_TIMEOUT_MS_DEFAULT.to_string(),
                ]}},
                "preStop": {"exec": {"command": [
                    BINARY_PATH, "drain-delay", "--ms", s.drain_delay_ms.to_string(),
                ]}},
            }),
        );
    }
    c.insert("resources".into(), Value::Object(resources));
    c.insert("securityContext".into(), proxy_security_context());
    let mut mounts =
        vec![json!({"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT_DIR, "readOnly": true})];
    if s.trust() {
        mounts.push(json!({
            "name": INTERCEPT_CA_VOLUME, "mountPath": INTERCEPT_CA_MOUNT_DIR, "readOnly": true,
        }));
    }
    c.insert("volumeMounts".into(), Value::Array(mounts));
    c.insert(
        "terminationMessagePolicy".into(),
        json!("FallbackToLogsOnError"),
    );
    Value::Object(c)
}

/// The `sluice iptables` arguments for a pod.
fn iptables_args(s: &Settings) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "iptables".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string(),
        "--proxy-gid".into(),
        PROXY_UID.to_string(),
        "--outbound-port".into(),
        PORT_OUTBOUND.to_string(),
        "--inbound-port".into(),
        PORT_INBOUND.to_string(),
    ];
    for (flag, v) in [
        ("--include-outbound-cidrs", &s.include_outbound_cidrs),
        ("--exclude-outbound-cidrs", &s.exclude_outbound_cidrs),
        ("--exclude-outbound-ports", &s.exclude_outbound_ports),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
            a.push(flag.into());
            a.push(v.clone());
        }
    }
    // Empty is meaningful here, as in Istio: no inbound redirection at all.
    if let Some(v) = &s.include_inbound_ports {
        a.push("--include-inbound-ports".into());
        a.push(v.clone());
    }
    a.push("--exclude-inbound-ports".into());
    a.push(s.exclude_inbound_ports.clone());
    if s.ipv6 {
        a.push("--ipv6".into());
    }
    a
}

fn init_container(s: &Settings) -> Value {
    let mut c = Map::new();
    c.insert("name".into(), json!(INIT_CONTAINER));
    c.insert("image".into(), json!(s.image));
    if let Some(p) = &s.image_pull_policy {
        c.insert("imagePullPolicy".into(), json!(p));
    }
    c.insert("args".into(), json!(iptables_args(s)));
    c.insert(
        "resources".into(),
        json!({
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "64Mi"},
        }),
    );
    c.insert(
        "securityContext".into(),
        json!({
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "privileged": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        }),
    );
    c.insert(
        "terminationMessagePolicy".into(),
        json!("FallbackToLogsOnError"),
    );
    Value::Object(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(meta: Value, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    }

    fn app() -> Value {
        json!({"containers": [{"name": "app", "image": "app:1"}]})
    }

    #[test]
    fn quantities_ports_and_cidrs_are_checked() {
        for ok in ["100m", "0.5", "2", "128Mi", "1Gi", "1e3", "1E", "500k"] {
            assert!(check_quantity(ok, "f").is_ok(), "{ok}");
        }
        for bad in [
            "",
            "lots",
            "1.2.3",
            "Mi",
            "1 Gi",
            "-1",
            ".",
            "1e",
            "12345678901234567890123456789012345",
        ] {
            assert!(check_quantity(bad, "f").is_err(), "{bad}");
        }
        assert_eq!(port_list(" 80, 443 ,", false, "f").unwrap(), "80,443");
        assert!(port_list("0", false, "f").is_err());
        assert!(port_list("65536", false, "f").is_err());
        assert!(port_list("*", false, "f").is_err());
        assert_eq!(port_list("*", true, "f").unwrap(), "*");
        let many = vec!["1"; ANNOTATION_LIST_ITEMS_MAX + 1].join(",");
        assert!(port_list(&many, false, "f").is_err());
        assert_eq!(
            cidr_list("10.0.0.0/8, fd00::/8,1.2.3.4", false, "f").unwrap(),
            "10.0.0.0/8,fd00::/8,1.2.3.4"
        );
        for bad in [
            "10.0.0.0/33",
            "fd00::/129",
            "host.example",
            "10.0.0.0/x",
            "*",
        ] {
            assert!(cidr_list(bad, false, "f").is_err(), "{bad}");
        }
        assert!(is_dns_subdomain("sluice-config.v2"));
        assert!(!is_dns_subdomain("Sluice"));
        assert!(!is_dns_subdomain("-x"));
    }

    #[test]
    fn a_taken_init_container_name_is_an_error_and_an_own_config_volume_is_kept() {
        let mut p = pod(
            json!({"name": "p"}),
            json!({"initContainers": [{"name": "sluice-init", "image": "x"}],
                   "containers": [{"name": "app", "image": "app:1"}]}),
        );
        let e = inject_pod(&mut p, &Options::default(), Policy::Default, "pod").unwrap_err();
        assert!(e.to_string().contains("already named `sluice-init`"), "{e}");

        let mut p = pod(
            json!({"name": "p"}),
            json!({"containers": [{"name": "app", "image": "app:1"}],
                   "volumes": [{"name": "sluice-config", "secret": {"secretName": "mine"}}]}),
        );
        let out = inject_pod(&mut p, &Options::default(), Policy::Default, "pod").unwrap();
        assert_eq!(out, Outcome::Injected);
        let vols = p["spec"]["volumes"].as_array().unwrap();
        assert_eq!(
            vols[0],
            json!({"name": "sluice-config", "secret": {"secretName": "mine"}})
        );
        assert_eq!(
            vols.iter().filter(|v| v["name"] == CONFIG_VOLUME).count(),
            1,
            "{vols:?}"
        );
    }

    #[test]
    fn policies_and_opt_outs() {
        let opts = Options::default();
        let mut p = pod(json!({"name": "p"}), app());
        assert_eq!(
            inject_pod(&mut p, &opts, Policy::Explicit, "pod").unwrap(),
            Outcome::Skipped(Skip::NotRequested)
        );
        assert_eq!(
            p,
            pod(json!({"name": "p"}), app()),
            "a skipped pod is unchanged"
        );
        let mut p = pod(json!({"annotations": {"sluice.dev/inject": "true"}}), app());
        assert_eq!(
            inject_pod(&mut p, &opts, Policy::Explicit, "pod").unwrap(),
            Outcome::Injected
        );
        let mut p = pod(json!({"labels": {"sluice.dev/inject": "maybe"}}), app());
        let e = inject_pod(&mut p, &opts, Policy::Default, "pod").unwrap_err();
        assert!(
            e.to_string().contains("metadata.labels.sluice.dev/inject"),
            "{e}"
        );
        let mut p = pod(
            json!({"annotations": {"sidecar.istio.io/inject": "false"}}),
            app(),
        );
        assert!(matches!(
            inject_pod(&mut p, &opts, Policy::Default, "pod").unwrap(),
            Outcome::Skipped(Skip::OptedOut(_))
        ));
        let mut p = pod(json!({"annotations": {"sluice.dev/inject": true}}), app());
        let e = inject_pod(&mut p, &opts, Policy::Default, "pod").unwrap_err();
        assert!(e.to_string().contains("must be a string"), "{e}");
        for spec in [
            json!({"containers": []}),
            json!({"containers": {"name": "a"}}),
            json!("x"),
        ] {
            let mut p = pod(json!({}), spec);
            assert!(inject_pod(&mut p, &opts, Policy::Default, "pod").is_err());
        }
        let mut p = json!({"metadata": {}});
        assert!(inject_pod(&mut p, &opts, Policy::Default, "pod").is_err());
        let mut p = json!([1]);
        assert!(inject_pod(&mut p, &opts, Policy::Default, "pod").is_err());
    }

    #[test]
    fn the_application_trusts_the_interception_ca_through_a_bundle() {
        let mut p = pod(
            json!({}),
            json!({
                "initContainers": [{"name": "migrate", "image": "m"}],
                "containers": [
                    {"name": "app", "image": "a",
                     "env": [{"name": "SSL_CERT_FILE", "value": "/mine.pem"}]},
                    {"name": "side", "image": "s", "volumeMounts": null},
                ],
            }),
        );
        inject_pod(&mut p, &Options::default(), Policy::Default, "pod").unwrap();
        let spec = &p["spec"];
        let names: Vec<&str> = spec["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [INIT_CONTAINER, TRUST_CONTAINER, PROXY_CONTAINER, "migrate"]
        );
        let bundle = format!("{TRUST_MOUNT_DIR}/{TRUST_BUNDLE_FILE}");
        // The app's own SSL_CERT_FILE is kept; the others are added.
        let app_c = &spec["containers"][0];
        assert_eq!(
            app_c["env"],
            json!([
                {"name": "SSL_CERT_FILE", "value": "/mine.pem"},
                {"name": "REQUESTS_CA_BUNDLE", "value": bundle},
                {"name": "NODE_EXTRA_CA_CERTS", "value": bundle},
            ])
        );
        for c in [&spec["containers"][1], &spec["initContainers"][3]] {
            assert_eq!(
                c["env"][0],
                json!({"name": "SSL_CERT_FILE", "value": bundle})
            );
            assert_eq!(
                c["volumeMounts"],
                json!([{"name": TRUST_VOLUME, "mountPath": TRUST_MOUNT_DIR, "readOnly": true}])
            );
        }
        // sluice's own containers: the proxy sees the CA (key included), the app never does.
        let proxy = &spec["initContainers"][2];
        assert!(proxy["env"].to_string().find("SSL_CERT_FILE").is_none());
        assert_eq!(
            proxy["volumeMounts"][1]["mountPath"],
            INTERCEPT_CA_MOUNT_DIR
        );
        let trust = &spec["initContainers"][1];
        assert_eq!(trust["args"][0], "ca");
        assert_eq!(trust["securityContext"]["runAsUser"], PROXY_UID);
        assert!(trust["securityContext"]["capabilities"]["add"].is_null());
        assert!(!spec["containers"]
            .to_string()
            .contains(INTERCEPT_CA_MOUNT_DIR));
        let vols = spec["volumes"].as_array().unwrap();
        assert!(vols.contains(&json!({"name": INTERCEPT_CA_VOLUME,
            "secret": {"secretName": INTERCEPT_CA_SECRET_DEFAULT, "optional": true}})));
        assert!(vols
            .iter()
            .any(|v| v["name"] == TRUST_VOLUME && v["emptyDir"]["medium"] == "Memory"));

        // Opting out per pod, or without iptables: none of it.
        for (ann, opts) in [
            (
                json!({"sluice.dev/interceptCASecret": "none"}),
                Options::default(),
            ),
            (
                json!({}),
                Options {
                    interception: Interception::None,
                    ..Options::default()
                },
            ),
        ] {
            let mut p = pod(json!({"annotations": ann}), app());
            inject_pod(&mut p, &opts, Policy::Default, "pod").unwrap();
            let s = p.to_string();
            assert!(
                !s.contains(TRUST_CONTAINER) && !s.contains(INTERCEPT_CA_VOLUME),
                "{s}"
            );
            assert!(!s.contains("SSL_CERT_FILE"), "{s}");
        }
        // Another Secret by annotation; a bad name or a bad env shape is an error.
        let mut p = pod(
            json!({"annotations": {"sluice.dev/interceptCASecret": "team-ca"}}),
            app(),
        );
        inject_pod(&mut p, &Options::default(), Policy::Default, "pod").unwrap();
        assert!(p["spec"]["volumes"].to_string().contains("\"team-ca\""));
        let mut p = pod(
            json!({"annotations": {"sluice.dev/interceptCASecret": "Bad_Name"}}),
            app(),
        );
        let e = inject_pod(&mut p, &Options::default(), Policy::Default, "pod").unwrap_err();
        assert!(
            e.to_string().contains("sluice.dev/interceptCASecret"),
            "{e}"
        );
        let mut p = pod(
            json!({}),
            json!({"containers": [{"name": "a", "image": "a", "env": {"X": "1"}}]}),
        );
        let e = inject_pod(&mut p, &Options::default(), Policy::Default, "pod").unwrap_err();
        assert!(
            e.to_string()
                .contains("pod.spec.containers[0].env: not a list"),
            "{e}"
        );
    }

    #[test]
    fn interception_none_adds_no_privileged_container() {
        let opts = Options {
            interception: Interception::None,
            ..Options::default()
        };
        let mut p = pod(json!({}), app());
        inject_pod(&mut p, &opts, Policy::Default, "pod").unwrap();
        let s = p.to_string();
        assert!(!s.contains("NET_ADMIN"), "{s}");
        assert!(!s.contains(INIT_CONTAINER), "{s}");
        assert_eq!(p["spec"]["initContainers"][0]["name"], PROXY_CONTAINER);
    }
}
