//! The webhook's self-managed certificates (`--webhook-secret`) against
//! the real test apiserver: the operator creates its Secret and writes the
//! CA into every webhook of a ValidatingWebhookConfiguration of the test's
//! own; two operators started at once converge on one Secret and serve
//! the same certificate; with short validities the serving certificate and
//! the CA rotate, and the certificate served is trusted by the bundle the
//! apiserver holds at every moment.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;
use support::*;

const SECRET: &str = "idplane-webhook-tls";
const SERVICE: &str = "idplane-webhook";
const T: Duration = Duration::from_secs(60);

/// `idplane operator` managing its webhook certificate in the test's
/// namespace, for the Service's names and 127.0.0.1, writing the CA into
/// `configuration`.
fn operator(ns: &str, tmp: &Path, identity: &str, configuration: &str, extra: &[&str]) -> Idplane {
    let mut args = vec![
        "--identity",
        identity,
        "--webhook-secret",
        SECRET,
        "--webhook-namespace",
        ns,
        "--webhook-service",
        SERVICE,
        "--webhook-dns-name",
        "127.0.0.1",
        "--webhook-configuration",
        configuration,
    ];
    // Each operator serves the webhook on a loopback port of its own,
    // unless the test names the one the configuration calls.
    let own = format!("127.0.0.1:{}", free_port());
    if !extra.contains(&"--webhook-listen") {
        args.extend_from_slice(&["--webhook-listen", &own]);
    }
    args.extend_from_slice(extra);
    Idplane::operator(
        ns,
        &tmp.join(format!("{identity}.db")),
        &tmp.join(format!("{identity}.log")),
        &args,
        &[("RUST_LOG", "idplane=info")],
    )
}

fn base64_text(value: &Value) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_str()?)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// A Secret's data, decoded.
fn data(secret: &Value) -> BTreeMap<String, String> {
    secret["data"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), base64_text(v)?)))
        .collect()
}

/// The managed Secret once it holds its four keys.
fn wait_secret(ns: &str) -> Value {
    wait_for("the webhook Secret", T, || {
        let secret = get_json(ns, &format!("secret/{SECRET}"))?;
        let data = data(&secret);
        ["ca.crt", "ca.key", "tls.crt", "tls.key"]
            .iter()
            .all(|k| data.get(*k).is_some_and(|v| !v.is_empty()))
            .then_some(secret)
    })
}

/// Each webhook's caBundle, decoded ("" when it has none).
fn bundles(configuration: &Value) -> Vec<String> {
    configuration["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| base64_text(&w["clientConfig"]["caBundle"]).unwrap_or_default())
        .collect()
}

/// The CAs of a PEM bundle.
fn cas(bundle: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(bundle.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Whether `crt` (PEM, leaf first) is valid for `name` now, trusting
/// `cas`: what the apiserver checks in a handshake.
fn verifies(cas: Vec<CertificateDer<'static>>, crt: &str, name: &str) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca).map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(crt.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let server = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &server, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The serial number (hex) of a PEM certificate, as idplane logs it.
fn serial(crt: &str) -> String {
    let der = CertificateDer::from_pem_slice(crt.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.raw_serial_as_string().replace(':', "")
}

/// The serial of the certificate the operator said it serves last.
fn served_serial(idplane: &Idplane) -> Option<String> {
    idplane
        .log_text()
        .lines()
        .rfind(|l| l.contains("serving the Secret's certificate"))
        .and_then(|l| l.split("serial=").nth(1))
        .map(|s| s.split_whitespace().next().unwrap_or("").to_string())
}

/// No private key in what the operator wrote.
fn assert_no_key_in_log(idplane: &Idplane, secret: &Value) {
    let log = idplane.log_text();
    assert!(!log.contains("PRIVATE KEY"), "{log}");
    let data = data(secret);
    for key in ["ca.key", "tls.key"] {
        let body: String = data[key]
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!log.contains(&body[..20]), "{key} in the log:\n{log}");
    }
}

/// A fresh namespace, a directory, and a webhook configuration of the
/// test's own with the webhooks `names` (aimed at a loopback port).
fn setup(names: &[&str]) -> (String, tempfile::TempDir, TestWebhookConfiguration, u16) {
    install_crds();
    let ns = temp_namespace("whcert");
    let port = free_port();
    let url = format!(
        "https://127.0.0.1:{port}/validate-or-kubectl-delete-validatingwebhookconfiguration-idplane"
    );
    let webhooks: Vec<TestWebhook> = names.iter().map(|n| TestWebhook::reviewing(n)).collect();
    let configuration = TestWebhookConfiguration::create(&ns, &url, None, &webhooks);
    configuration.select(&ns);
    (ns, tempfile::tempdir().unwrap(), configuration, port)
}

#[test]
fn the_operator_creates_its_secret_and_writes_the_ca_into_every_webhook() {
    let (ns, tmp, configuration, port) = setup(&["validate.idplane.dev", "second.idplane.dev"]);
    assert_eq!(bundles(&configuration.get()), ["", ""]);
    let mut idplane = operator(&ns, tmp.path(), "a", &configuration.name, &[]);

    let secret = wait_secret(&ns);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "idplane"
    );
    let data = data(&secret);
    let ca = wait_for("every webhook's caBundle", T, || {
        let bundles = bundles(&configuration.get());
        bundles
            .iter()
            .all(|b| b == &data["ca.crt"])
            .then_some(bundles[0].clone())
    });
    for name in [
        SERVICE.to_string(),
        format!("{SERVICE}.{ns}"),
        format!("{SERVICE}.{ns}.svc"),
        format!("{SERVICE}.{ns}.svc.cluster.local"),
        "127.0.0.1".to_string(),
    ] {
        verifies(cas(&ca), &data["tls.crt"], &name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(verifies(cas(&ca), &data["tls.crt"], "other.example").is_err());
    // Only caBundle is idplane's, under its own field manager.
    let managed = kubectl_ok(&[
        "get",
        "validatingwebhookconfiguration",
        &configuration.name,
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let managed: Value = serde_json::from_str(&managed).unwrap();
    let ours = managed["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["manager"] == "idplane-webhook-certificates")
        .expect("idplane's field manager");
    let fields = ours["fieldsV1"]["f:webhooks"].to_string();
    assert!(fields.contains("f:caBundle"), "{fields}");
    assert!(!fields.contains("f:url"), "{fields}");
    wait_for("the certificate served", T, || {
        (served_serial(&idplane)? == serial(&data["tls.crt"])).then_some(())
    });

    // Someone resets a bundle: idplane writes it back.
    kubectl_ok(&[
        "patch",
        "validatingwebhookconfiguration",
        &configuration.name,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/webhooks/1/clientConfig/caBundle"}]"#,
    ]);
    wait_for("the caBundle written back", T, || {
        bundles(&configuration.get())
            .iter()
            .all(|b| b == &data["ca.crt"])
            .then_some(())
    });

    // A restart reads the Secret and serves it: nothing is reissued.
    let version = secret["metadata"]["resourceVersion"].clone();
    idplane.stop(T);
    assert_no_key_in_log(&idplane, &secret);
    drop(idplane);
    // This time on the port the configuration calls: the apiserver reaches
    // the webhook through the certificate idplane made, trusted by the
    // bundle idplane wrote, and idplane's rules refuse a second active hook.
    let listen = format!("127.0.0.1:{port}");
    let idplane = operator(
        &ns,
        tmp.path(),
        "a2",
        &configuration.name,
        &["--webhook-listen", &listen],
    );
    wait_for("the same certificate served after a restart", T, || {
        (served_serial(&idplane)? == serial(&data["tls.crt"])).then_some(())
    });
    let again = get_json(&ns, &format!("secret/{SECRET}")).unwrap();
    assert_eq!(again["metadata"]["resourceVersion"], version);
    let hook = |name: &str| {
        format!(
            "apiVersion: idplane.dev/v1alpha1\nkind: TelephonyHook\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{url: 'https://sms.example.com/{name}', active: true,\n\
             auth: {{header: X-Api-Key, secretRef: {{name: sms, key: token}}}}}}\n"
        )
    };
    kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "sms",
        "-n",
        &ns,
        "--from-literal=token=t0ken",
    ]);
    let first = wait_for("the first active hook admitted", T, || {
        let out = kubectl_stdin(&["apply", "-f", "-"], &hook("first"));
        out.status.success().then_some(out)
    });
    assert!(first.status.success());
    let second = wait_for("the second active hook refused by idplane", T, || {
        let out = kubectl_stdin(&["apply", "-f", "-"], &hook("second"));
        let err = text(&out.stderr);
        (!out.status.success() && err.contains("first")).then_some(err)
    });
    assert!(second.contains("spec.active"), "{second}");
    assert!(
        get_json(&ns, "telephonyhook/second").is_none(),
        "a refused hook is not stored"
    );
    assert_no_key_in_log(&idplane, &again);
}

#[test]
fn two_operators_started_at_once_serve_one_secret() {
    let (ns, tmp, configuration, _) = setup(&["validate.idplane.dev"]);
    let (a, b) = std::thread::scope(|s| {
        let start = |identity: &'static str| {
            let (ns, tmp, name) = (&ns, tmp.path(), &configuration.name);
            s.spawn(move || operator(ns, tmp, identity, name, &[]))
        };
        let (a, b) = (start("a"), start("b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let secret = wait_secret(&ns);
    let crt = data(&secret)["tls.crt"].clone();
    for idplane in [&a, &b] {
        wait_for("both operators serve the Secret's certificate", T, || {
            (served_serial(idplane)? == serial(&crt)).then_some(())
        });
    }
    wait_for("the caBundle", T, || {
        (bundles(&configuration.get())[0] == data(&secret)["ca.crt"]).then_some(())
    });
    // Settled: the Secret is the one both serve.
    let now = get_json(&ns, &format!("secret/{SECRET}")).unwrap();
    assert_eq!(data(&now)["tls.crt"], crt);
    for idplane in [&a, &b] {
        assert_no_key_in_log(idplane, &now);
    }
}

/// The webhook configuration and the Secret, read in one call
/// (configuration first): what the apiserver trusts, and what idplane
/// serves a moment later.
fn trusted_and_served(ns: &str, configuration: &str) -> (String, BTreeMap<String, String>) {
    let out = kubectl_ok(&[
        "get",
        "-n",
        ns,
        &format!("validatingwebhookconfiguration/{configuration}"),
        &format!("secret/{SECRET}"),
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).unwrap();
    let items = list["items"].as_array().unwrap();
    let by_kind = |kind: &str| items.iter().find(|i| i["kind"] == kind).unwrap();
    (
        bundles(by_kind("ValidatingWebhookConfiguration"))[0].clone(),
        data(by_kind("Secret")),
    )
}

#[test]
fn short_lived_certificates_rotate_and_stay_trusted_throughout() {
    let (ns, tmp, configuration, _) = setup(&["validate.idplane.dev"]);
    // The serving certificate is renewed about every 25 s, the CA after
    // about 80 s; the serving certificate moves to the new CA 4 s after
    // the configuration trusts it.
    let idplane = operator(
        &ns,
        tmp.path(),
        "a",
        &configuration.name,
        &[
            "--webhook-ca-validity=120s",
            "--webhook-serving-validity=40s",
        ],
    );
    let name = format!("{SERVICE}.{ns}.svc");
    let mut serials: Vec<String> = Vec::new();
    let mut cas_seen: Vec<String> = Vec::new();
    let mut two_cas_seen = false;
    let mut checks = 0;
    wait_every(
        "two serving renewals and a CA renewal",
        Duration::from_secs(300),
        Duration::from_millis(250),
        || {
            let (trusted, secret) = trusted_and_served(&ns, &configuration.name);
            if trusted.is_empty() {
                return None;
            }
            checks += 1;
            if let Err(e) = verifies(cas(&trusted), &secret["tls.crt"], &name) {
                panic!(
                    "the served certificate is not trusted by the configuration's bundle: {e}\nlog:\n{}",
                    idplane.log_text()
                );
            }
            let serving = serial(&secret["tls.crt"]);
            if serials.last() != Some(&serving) {
                serials.push(serving);
            }
            let bundle = cas(&secret["ca.crt"]);
            two_cas_seen |= bundle.len() == 2;
            let signing = serial(&secret["ca.crt"]);
            if cas_seen.last() != Some(&signing) {
                cas_seen.push(signing);
            }
            // Moved: the serving certificate of the second CA verifies
            // against that CA alone.
            let moved = cas_seen.len() >= 2
                && verifies(vec![bundle[0].clone()], &secret["tls.crt"], &name).is_ok();
            (serials.len() >= 3 && two_cas_seen && moved).then_some(())
        },
    );
    assert!(checks > 10, "{checks} checks");
    let secret = get_json(&ns, &format!("secret/{SECRET}")).unwrap();
    assert_no_key_in_log(&idplane, &secret);
}
