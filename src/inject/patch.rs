//! RFC 6902 JSON Patch generation: the difference between the pod the API server sent the
//! webhook and the pod [`super::inject_pod`] made of it.
//!
//! Owns: [`diff`]. Invariant: applying `diff(a, b)` to `a` yields exactly `b` (the golden
//! tests check this with an independent implementation, the `json-patch` crate).
//!
//! Trade-off: objects are diffed key by key (so a patch only names the annotations and lists
//! it changes, and never rewrites fields it does not own), but a changed list is replaced as a
//! whole (`replace /spec/initContainers`). Index-wise `add` operations would be shorter, yet a
//! whole-list `replace` of a list the API server itself just sent cannot be applied at a shifted
//! index, and stays correct whatever the injector inserted where.

use serde_json::{json, Value};

/// The JSON Patch that turns `from` into `to`, as a list of operations.
pub fn diff(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    let mut path = String::new();
    diff_at(&mut path, from, to, &mut ops);
    ops
}

fn diff_at(path: &mut String, from: &Value, to: &Value, ops: &mut Vec<Value>) {
    if from == to {
        return;
    }
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            for k in a.keys() {
                if !b.contains_key(k) {
                    ops.push(json!({"op": "remove", "path": child(path, k)}));
                }
            }
            for (k, vb) in b {
                match a.get(k) {
                    Some(va) => {
                        let len = path.len();
                        push_token(path, k);
                        diff_at(path, va, vb, ops);
                        path.truncate(len);
                    }
                    None => ops.push(json!({"op": "add", "path": child(path, k), "value": vb})),
                }
            }
        }
        _ => ops.push(json!({"op": "replace", "path": path.clone(), "value": to})),
    }
}

fn child(path: &str, key: &str) -> String {
    let mut p = path.to_string();
    push_token(&mut p, key);
    p
}

/// Append `/key` with RFC 6901 escaping (`~` → `~0`, `/` → `~1`: annotation keys have slashes).
fn push_token(path: &mut String, key: &str) {
    path.push('/');
    for ch in key.chars() {
        match ch {
            '~' => path.push_str("~0"),
            '/' => path.push_str("~1"),
            c => path.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(mut doc: Value, ops: &[Value]) -> Value {
        let p: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
        json_patch::patch(&mut doc, &p).unwrap();
        doc
    }

    #[test]
    fn escapes_and_round_trips() {
        let a = json!({"metadata": {"annotations": {"a~b/c": "1", "gone": "x"}},
                       "spec": {"containers": [{"name": "app"}]}});
        let b = json!({"metadata": {"annotations": {"a~b/c": "2", "sluice.dev/status": "injected"}},
                       "spec": {"containers": [{"name": "sluice-proxy"}, {"name": "app"}],
                                "volumes": [{"name": "v"}]}});
        let ops = diff(&a, &b);
        let s = serde_json::to_string(&ops).unwrap();
        assert!(s.contains("/metadata/annotations/a~0b~1c"), "{s}");
        assert!(
            s.contains("/metadata/annotations/sluice.dev~1status"),
            "{s}"
        );
        assert_eq!(apply(a, &ops), b);
    }

    #[test]
    fn equal_documents_give_an_empty_patch() {
        let a = json!({"x": [1, 2, {"y": null}]});
        assert!(diff(&a, &a.clone()).is_empty());
    }

    #[test]
    fn type_change_at_root_and_null_maps() {
        let a = json!({"metadata": {"annotations": null}});
        let b = json!({"metadata": {"annotations": {"k": "v"}}});
        let ops = diff(&a, &b);
        assert_eq!(apply(a, &ops), b);
        let ops = diff(&json!(1), &json!({"a": 1}));
        assert_eq!(apply(json!(1), &ops), json!({"a": 1}));
    }

    proptest::proptest! {
        #[test]
        fn diff_then_apply_is_identity(a in arb_json(), b in arb_json()) {
            let ops = diff(&a, &b);
            proptest::prop_assert_eq!(apply(a, &ops), b);
        }
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(|n| json!(n)),
            "[a-z~/]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c~/]{1,3}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
