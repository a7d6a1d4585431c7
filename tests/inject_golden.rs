//! Golden files for sidecar injection, both ways in (`sluice::inject`):
//!
//! * `tests/fixtures/inject/manifests/NAME.yaml` (+ optional `NAME.args`: `sluice inject`
//!   flags) is injected and must equal `NAME.injected.yaml`; injecting that output again must
//!   change nothing (idempotency).
//! * `tests/fixtures/inject/webhook/NAME/request.json` (an AdmissionReview, posted to the path
//!   in `endpoint`) must be answered with `response.json`; when the answer carries a patch, its
//!   decoded form must equal `patch.json`, and applying it to the request's pod with an
//!   independent JSON Patch implementation (the `json-patch` crate) must give `pod.json`. That
//!   patched pod, reviewed again, must be allowed without a patch (idempotency).
//!
//! `SLUICE_BLESS=1 cargo test --test inject_golden` rewrites the expected files; review the
//! diff before committing it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::Parser;
use serde_json::Value;
use sluice::inject::{manifest, webhook, Options, OptionsArgs, Policy};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    opts: OptionsArgs,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/inject")
}

fn bless() -> bool {
    std::env::var_os("SLUICE_BLESS").is_some()
}

/// The options of a case: a fixed image (so a version bump changes no golden file) plus the
/// flags in `args`.
fn options(args_file: &Path) -> Options {
    let extra = std::fs::read_to_string(args_file).unwrap_or_default();
    let mut argv = vec!["test".to_string(), "--image".into(), "sluice:test".into()];
    argv.extend(extra.split_whitespace().map(str::to_string));
    Args::try_parse_from(argv)
        .expect("args")
        .opts
        .into_options()
        .expect("options")
}

fn check_or_bless(path: &Path, actual: &str) {
    if bless() {
        std::fs::write(path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with SLUICE_BLESS=1)", path.display()));
    if expected != actual {
        panic!(
            "{} differs from the output:\n{actual}\n(run with SLUICE_BLESS=1 and review the diff)",
            path.display()
        );
    }
}

#[test]
fn manifests_match_golden_files_and_reinjection_changes_nothing() {
    let dir = root().join("manifests");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("manifests dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            n.ends_with(".yaml") && !n.ends_with(".injected.yaml")
        })
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "fixtures missing: {cases:?}");
    for input in cases {
        let stem = input.file_stem().and_then(|s| s.to_str()).expect("stem");
        let opts = options(&dir.join(format!("{stem}.args")));
        let text = std::fs::read_to_string(&input).expect("read");
        let (out, reports) = manifest::inject_yaml(&text, &opts)
            .unwrap_or_else(|e| panic!("{}: {e}", input.display()));
        assert!(!reports.is_empty(), "{stem}: no pod found");
        check_or_bless(&dir.join(format!("{stem}.injected.yaml")), &out);
        let (again, reports2) = manifest::inject_yaml(&out, &opts).expect("reinject");
        assert_eq!(again, out, "{stem}: injecting twice differs from once");
        assert!(
            reports2
                .iter()
                .all(|r| r.outcome != sluice::inject::Outcome::Injected),
            "{stem}: {reports2:?}"
        );
        // Every output parses with an independent reader as the same documents.
        let docs = manifest::parse_documents(&out).expect("reparse");
        assert_eq!(manifest::emit_documents(&docs).expect("emit"), out);
    }
}

#[test]
fn webhook_reviews_match_golden_files_and_patches_apply() {
    let dir = root().join("webhook");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("webhook dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 8, "fixtures missing: {cases:?}");
    let mut injected = 0;
    for case in cases {
        let name = case.file_name().and_then(|n| n.to_str()).expect("name");
        let opts = options(&case.join("args"));
        let endpoint = std::fs::read_to_string(case.join("endpoint")).expect("endpoint");
        let policy = match endpoint.trim() {
            "/inject" => Policy::Explicit,
            "/inject/namespace" => Policy::Default,
            other => panic!("{name}: unknown endpoint {other}"),
        };
        let body = std::fs::read(case.join("request.json")).expect("request");
        let req: Value = serde_json::from_slice(&body).expect("request json");
        let resp = webhook::review(&body, &opts, policy).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut pretty = serde_json::to_string_pretty(&resp).expect("json");
        pretty.push('\n');
        check_or_bless(&case.join("response.json"), &pretty);
        assert_eq!(resp["response"]["uid"], req["request"]["uid"], "{name}");
        assert_eq!(resp["apiVersion"], req["apiVersion"], "{name}");
        let Some(p) = resp["response"]["patch"].as_str() else {
            assert!(
                !case.join("pod.json").exists() || bless(),
                "{name}: expected a patch"
            );
            continue;
        };
        injected += 1;
        assert_eq!(resp["response"]["patchType"], "JSONPatch", "{name}");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(p)
            .expect("base64");
        let ops: Value = serde_json::from_slice(&raw).expect("patch json");
        let mut ops_pretty = serde_json::to_string_pretty(&ops).expect("json");
        ops_pretty.push('\n');
        check_or_bless(&case.join("patch.json"), &ops_pretty);
        let patch: json_patch::Patch = serde_json::from_value(ops).expect("a valid JSON Patch");
        let mut pod = req["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut pod_pretty = serde_json::to_string_pretty(&pod).expect("json");
        pod_pretty.push('\n');
        check_or_bless(&case.join("pod.json"), &pod_pretty);

        // Idempotency: the injected pod, reviewed again, is allowed unchanged.
        let mut again = req.clone();
        again["request"]["object"] = pod;
        let body2 = serde_json::to_vec(&again).expect("json");
        let resp2 = webhook::review(&body2, &opts, policy).expect("review");
        assert_eq!(resp2["response"]["allowed"], true, "{name}");
        assert!(resp2["response"].get("patch").is_none(), "{name}: {resp2}");
    }
    assert!(injected >= 4, "too few injecting cases: {injected}");
}

#[test]
fn malformed_reviews_are_bad_requests_not_panics() {
    let opts = Options::default();
    for body in [
        &b""[..],
        b"{",
        b"[]",
        b"null",
        b"{\"apiVersion\":\"v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\"}}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"Pod\",\"request\":{\"uid\":\"u\"}}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{}}",
        b"{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":\"u\",\"kind\":{\"kind\":\"Pod\"},\"operation\":\"CREATE\",\"object\":7}}",
    ] {
        let r = webhook::review(body, &opts, Policy::Default);
        let e = r.expect_err(&String::from_utf8_lossy(body));
        assert_eq!(sluice::error::Classify::status(&e), 400);
    }
    // A pod of the wrong shape is refused with a reason, never patched.
    let body = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"},"operation":"CREATE","object":{"metadata":{"labels":{"sluice.dev/inject":"true"}},"spec":{"containers":"app"}}}}"#;
    let r = webhook::review(body, &opts, Policy::Explicit).expect("review");
    assert_eq!(r["response"]["allowed"], false);
    let msg = r["response"]["status"]["message"].as_str().unwrap_or("");
    assert!(msg.contains("pod.spec.containers: not a list"), "{msg}");
}
