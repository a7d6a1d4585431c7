//! Sidecar injection on hostile input: any bytes as an AdmissionReview (both webhook policies)
//! and as a YAML manifest. Must never panic; an injected result must be idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::inject::{manifest, webhook, Options, Policy};

fuzz_target!(|data: &[u8]| {
    let opts = Options::default();
    for policy in [Policy::Default, Policy::Explicit] {
        let _ = webhook::review(data, &opts, policy);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok((out, _)) = manifest::inject_yaml(text, &opts) {
            let (again, _) = manifest::inject_yaml(&out, &opts).expect("output must parse");
            assert_eq!(again, out, "injecting twice differs from once");
        }
    }
});
