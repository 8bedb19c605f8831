//! idplane's Argo CD health check (`docs/argocd/health.lua`) against every
//! status sample, in Argo CD's own test layout: for each kind,
//! `docs/argocd/idplane.dev/<Kind>/health_test.yaml` lists samples
//! (`testdata/*.yaml`, one per state) with the health status and message
//! Argo CD must show; the script must give exactly those. Also: the
//! argocd-cm patch the docs install holds the same script for each kind.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use idplane::resources::Kind;
use serde::Deserialize;
use serde_json::Value;
use support::argocd::{ArgoHealth, HEALTH_LUA, health_script, run_health};
use support::root;

/// A kind's `health_test.yaml`, as Argo CD's `resource_customizations` tests
/// are written.
#[derive(Clone, Debug, Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: Expected,
    input_path: String,
}

#[derive(Clone, Debug, Deserialize)]
struct Expected {
    status: String,
    message: String,
}

fn kind_dir(kind: Kind) -> PathBuf {
    root().join("docs/argocd/idplane.dev").join(kind.as_str())
}

fn read_tests(dir: &Path) -> HealthTests {
    let path = dir.join("health_test.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One line per sample whose health is not the expected one.
fn mismatches(script: &str, dir: &Path, tests: &HealthTests) -> Vec<String> {
    let mut wrong = Vec::new();
    for t in &tests.tests {
        let path = dir.join(&t.input_path);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let obj: Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let want = ArgoHealth {
            status: t.health_status.status.clone(),
            message: t.health_status.message.clone(),
        };
        match run_health(script, &obj) {
            Ok(got) if got == want => {}
            Ok(got) => wrong.push(format!("{}: got {got:?}, want {want:?}", path.display())),
            Err(e) => wrong.push(format!("{}: the script failed: {e}", path.display())),
        }
    }
    wrong
}

#[test]
fn every_sample_gets_its_expected_health() {
    let script = health_script();
    let mut wrong = Vec::new();
    for kind in Kind::ALL {
        let dir = kind_dir(kind);
        let tests = read_tests(&dir);
        wrong.extend(mismatches(&script, &dir, &tests));

        // Each kind's states reach Healthy, Progressing and Degraded.
        let statuses: BTreeSet<&str> = tests
            .tests
            .iter()
            .map(|t| t.health_status.status.as_str())
            .collect();
        for status in ["Healthy", "Progressing", "Degraded"] {
            assert!(statuses.contains(status), "{kind:?} has no {status} sample");
        }
        // Every sample is tested.
        let listed: BTreeSet<String> = tests.tests.iter().map(|t| t.input_path.clone()).collect();
        for entry in std::fs::read_dir(dir.join("testdata")).unwrap() {
            let name = format!("testdata/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(
                listed.contains(&name),
                "{kind:?}: {name} is in no health_test.yaml"
            );
        }
        // Argo CD's layout: <group>/<Kind>/health.lua, the one script.
        let lua = std::fs::read_to_string(dir.join("health.lua")).unwrap();
        assert_eq!(lua, script, "{kind:?}/health.lua is not {HEALTH_LUA}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn a_wrong_expectation_is_caught() {
    let script = health_script();
    let dir = kind_dir(Kind::TelephonyHook);
    let mut tests = read_tests(&dir);
    assert!(mismatches(&script, &dir, &tests).is_empty());
    for t in &mut tests.tests {
        t.health_status.status = match t.health_status.status.as_str() {
            "Healthy" => "Degraded".into(),
            _ => "Healthy".into(),
        };
    }
    let wrong = mismatches(&script, &dir, &tests);
    assert_eq!(wrong.len(), tests.tests.len(), "{wrong:?}");
    // A script that breaks is caught too.
    let broken = script.replace("return hs", "return nil");
    assert_eq!(
        mismatches(&broken, &dir, &read_tests(&dir)).len(),
        tests.tests.len()
    );
}

#[test]
fn the_argocd_cm_patch_holds_the_script_for_each_kind() {
    let path = root().join("docs/argocd/argocd-cm.yaml");
    let patch: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let script = health_script();
    let data = patch["data"].as_object().expect("data");
    let keys: BTreeSet<&str> = data.keys().map(String::as_str).collect();
    let want: BTreeSet<String> = Kind::ALL
        .iter()
        .map(|k| format!("resource.customizations.health.idplane.dev_{}", k.as_str()))
        .collect();
    assert_eq!(keys, want.iter().map(String::as_str).collect());
    for (key, value) in data {
        assert!(
            value.as_str() == Some(script.as_str()),
            "{key} in docs/argocd/argocd-cm.yaml is not {HEALTH_LUA}: copy the script \
             in again, indented by four spaces"
        );
    }
}
