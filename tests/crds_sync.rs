//! The committed CRDs under `crds/` must be exactly what the code generates.
//! Fix a failure with `scripts/gen-crds.sh`.

use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn committed_crds_match_the_generated_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut expected_files = BTreeSet::new();
    for crd in idplane::resources::all_crds() {
        let name = idplane::resources::crd_file_name(&crd);
        let generated = idplane::resources::crd_yaml(&crd).unwrap();
        let committed = std::fs::read_to_string(dir.join(&name))
            .unwrap_or_else(|e| panic!("crds/{name} is missing ({e}); run scripts/gen-crds.sh"));
        assert!(
            committed == generated,
            "crds/{name} differs from what the code generates; run scripts/gen-crds.sh"
        );
        expected_files.insert(name);
    }
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        present, expected_files,
        "crds/ holds files the code does not generate"
    );
}

#[test]
fn every_schema_field_has_a_description() {
    fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                let p = format!("{path}.{name}");
                if prop.get("description").is_none()
                    && !["apiVersion", "kind", "metadata"].contains(&name.as_str())
                {
                    missing.push(p.clone());
                }
                walk(prop, &p, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    let mut missing = Vec::new();
    for crd in idplane::resources::all_crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        walk(
            &schema["openAPIV3Schema"],
            &crd.spec.names.kind,
            &mut missing,
        );
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn the_crd_reference_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/crd-reference.md");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == idplane::resources::reference::markdown(),
        "docs/crd-reference.md is stale; run scripts/gen-crds.sh"
    );
}

#[test]
fn the_chart_carries_the_same_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for crd in idplane::resources::all_crds() {
        let name = idplane::resources::crd_file_name(&crd);
        let chart = std::fs::read_to_string(root.join("charts/idplane/crds").join(&name))
            .unwrap_or_default();
        assert!(
            chart == idplane::resources::crd_yaml(&crd).unwrap(),
            "charts/idplane/crds/{name} is stale; run scripts/gen-crds.sh"
        );
    }
}
