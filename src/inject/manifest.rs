//! `sluice inject`: rewrite Kubernetes manifests (multi-document YAML) with the sidecar, like
//! `istioctl kube-inject`.
//!
//! Owns: finding the pod (template) in each document by `kind` and reading/writing YAML.
//! The mutation itself is [`super::inject_pod`], shared with the webhook.
//!
//! Kinds: `Pod`; `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`, `ReplicationController`
//! and `Job` (`spec.template`); `CronJob` (`spec.jobTemplate.spec.template`); `List` (each of
//! `items`, as `kubectl get -o yaml` prints). Every other document (Services, ConfigMaps,
//! CRDs...) is passed through unchanged.
//!
//! Trade-offs: documents go through `serde_json::Value`, so the output has its keys in
//! alphabetical order (as `kubectl get -o yaml` prints them) and loses comments, as
//! `istioctl kube-inject` does. Strings are quoted wherever YAML 1.1 readers (kubectl's
//! go-yaml) would take them for another type (`"true"`, `"1337"`, `"0x10"`), which the
//! serializer (serde-saphyr, maintained; serde_yaml is deprecated) guarantees.

use serde_json::Value;

use super::{inject_pod, InjectError, Options, Outcome, Policy};

/// Largest manifest accepted, in bytes: far above any real bundle, small enough that a wrong
/// file (a binary, a log) is refused before it is parsed.
pub const MANIFEST_BYTES_MAX: usize = 32 * 1024 * 1024;

/// What happened to one pod (template) of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `Kind/name` of the document (with `[i]` for `List` items).
    pub object: String,
    pub outcome: Outcome,
    /// A note for the operator (a classic sidecar in a Job never exits).
    pub warning: Option<String>,
}

/// Parse multi-document YAML into JSON values (empty documents dropped).
pub fn parse_documents(text: &str) -> Result<Vec<Value>, InjectError> {
    if text.len() > MANIFEST_BYTES_MAX {
        return Err(InjectError::Parse(format!(
            "larger than {MANIFEST_BYTES_MAX} bytes"
        )));
    }
    // Read plain scalars as kubectl's YAML 1.1 reader (go-yaml v2) does: `0644` is octal
    // (`defaultMode: 0644` must stay 420, not become 644), `yes`/`on` are booleans.
    let options = serde_saphyr::options! { legacy_octal_numbers: true };
    let docs: Vec<Value> =
        serde_saphyr::from_str_multiple_with_options(text, options).map_err(|e| {
            let first = e.to_string();
            let first = first
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            InjectError::Parse(first.to_string())
        })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Write JSON values as multi-document YAML.
pub fn emit_documents(docs: &[Value]) -> Result<String, InjectError> {
    serde_saphyr::to_string_multiple(docs).map_err(|e| InjectError::Emit(e.to_string()))
}

/// Inject every pod (template) of `text`; returns the new YAML and one report per pod.
pub fn inject_yaml(text: &str, opts: &Options) -> Result<(String, Vec<Report>), InjectError> {
    let mut docs = parse_documents(text)?;
    let mut reports = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        inject_document(doc, opts, &mut reports).map_err(|e| match e {
            InjectError::Invalid { field, problem } => InjectError::Yaml {
                doc: i + 1,
                problem: format!("{field}: {problem}"),
            },
            other => other,
        })?;
    }
    Ok((emit_documents(&docs)?, reports))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_str()
}

/// Inject the pod (template) of one document, if its kind has one.
pub fn inject_document(
    doc: &mut Value,
    opts: &Options,
    reports: &mut Vec<Report>,
) -> Result<(), InjectError> {
    if !doc.is_object() {
        return Err(InjectError::invalid("document", "not a map"));
    }
    let kind = str_at(doc, &["kind"]).unwrap_or("").to_string();
    let name = str_at(doc, &["metadata", "name"])
        .or_else(|| str_at(doc, &["metadata", "generateName"]))
        .unwrap_or("")
        .to_string();
    let object = format!("{kind}/{name}");
    let template_path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "List" => {
            let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut) else {
                return Ok(());
            };
            for (j, item) in items.iter_mut().enumerate() {
                let start = reports.len();
                inject_document(item, opts, reports).map_err(|e| match e {
                    InjectError::Invalid { field, problem } => {
                        InjectError::invalid(format!("items[{j}].{field}"), problem)
                    }
                    other => other,
                })?;
                for r in &mut reports[start..] {
                    r.object = format!("{object}[{j}]/{}", r.object);
                }
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let mut pod = &mut *doc;
    let mut field = String::from(&object);
    for p in template_path {
        field.push('.');
        field.push_str(p);
        pod = match pod.get_mut(*p) {
            Some(v) => v,
            None => return Err(InjectError::invalid(field, "missing")),
        };
    }
    let outcome = inject_pod(pod, opts, Policy::Default, &field)?;
    let native = !pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(super::PROXY_CONTAINER))
        });
    let warning = (outcome == Outcome::Injected && (kind == "Job" || kind == "CronJob") && !native)
        .then(|| {
            "a classic sidecar never exits, so this Job never completes: use the native form \
             (Kubernetes >= 1.29)"
                .to_string()
        });
    reports.push(Report {
        object,
        outcome,
        warning,
    });
    Ok(())
}

/// `sluice inject -f FILE [-o OUT]`: read (`-` is stdin), inject, write (stdout when no `-o`),
/// and tell on stderr what happened to each pod. Errors are one line for the operator.
pub fn run_cli(
    input: &std::path::Path,
    output: Option<&std::path::Path>,
    opts: &Options,
) -> Result<(), String> {
    use std::io::{Read, Write};
    let name = input.display().to_string();
    let mut text = String::new();
    let read = if name == "-" {
        std::io::stdin()
            .take(MANIFEST_BYTES_MAX as u64 + 1)
            .read_to_string(&mut text)
    } else {
        std::fs::File::open(input).and_then(|f| {
            f.take(MANIFEST_BYTES_MAX as u64 + 1)
                .read_to_string(&mut text)
        })
    };
    read.map_err(|e| format!("{name}: {e}"))?;
    let (out, reports) = inject_yaml(&text, opts).map_err(|e| format!("{name}: {e}"))?;
    for r in &reports {
        match &r.outcome {
            Outcome::Injected => eprintln!("{}: injected", r.object),
            Outcome::Skipped(why) => eprintln!("{}: skipped: {why}", r.object),
        }
        if let Some(w) = &r.warning {
            eprintln!("{}: warning: {w}", r.object);
        }
    }
    match output {
        Some(p) if p.as_os_str() != "-" => {
            // Write then rename: `-o app.yaml -f app.yaml` must never leave half a file.
            let tmp = p.with_extension("sluice-inject.tmp");
            std::fs::write(&tmp, &out)
                .and_then(|_| std::fs::rename(&tmp, p))
                .map_err(|e| format!("{}: {e}", p.display()))
        }
        _ => std::io::stdout()
            .write_all(out.as_bytes())
            .map_err(|e| format!("stdout: {e}")),
    }
}
