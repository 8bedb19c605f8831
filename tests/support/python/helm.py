"""Helm 4 for the chart tests, through its own Go SDK (helm-python-sdk,
installed into the test virtualenv by scripts/test-tools.sh): no helm
binary, and nothing but the chart directory and the cluster it is told.

    helm.py render    CHART VALUES_JSON RELEASE NAMESPACE
    helm.py lint      CHART [VALUES_JSON]
    helm.py install   CHART VALUES_JSON RELEASE --kubeconfig FILE --namespace NS
    helm.py upgrade   CHART VALUES_JSON RELEASE --kubeconfig FILE --namespace NS
    helm.py status    RELEASE --kubeconfig FILE --namespace NS
    helm.py uninstall RELEASE --kubeconfig FILE --namespace NS

VALUES_JSON is a file of user values, merged by Helm over the chart's
values.yaml. `render` prints the manifests as one YAML stream, sorted by
template path, as `helm template` does; `lint` prints Helm's report and the
release actions the release, as JSON. A Helm error (a template's `fail`, a
refused object, an unknown release) goes to stderr with exit status 1.
"""

import argparse
import json
import sys

import helm_python as helm

# Seconds a release action may take; the chart has no hooks and nothing is
# waited for (no kubelet runs pods in the test cluster).
TIMEOUT = 120


def values(path):
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def render(args):
    with helm.Chart.load(args.chart) as chart:
        manifests = chart.render(values(args.values), name=args.release, namespace=args.namespace)
    for path in sorted(manifests):
        if manifests[path].strip() and not path.endswith("NOTES.txt"):
            print(f"---\n# Source: {path}\n{manifests[path].strip()}")


def lint(args):
    return helm.lint(args.chart, values(args.values))


def config(args):
    return helm.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)


def install(args):
    with config(args) as cfg, helm.Chart.load(args.chart) as chart:
        return cfg.install(
            chart, args.release, values(args.values), namespace=args.namespace, timeout=TIMEOUT
        )


def upgrade(args):
    with config(args) as cfg, helm.Chart.load(args.chart) as chart:
        return cfg.upgrade(
            chart, args.release, values(args.values), namespace=args.namespace, timeout=TIMEOUT
        )


def status(args):
    with config(args) as cfg:
        return cfg.status(args.release)


def uninstall(args):
    with config(args) as cfg:
        return cfg.uninstall(args.release, timeout=TIMEOUT)


def main():
    parser = argparse.ArgumentParser(prog="helm.py")
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("render")
    for arg in ["chart", "values", "release", "namespace"]:
        sub.add_argument(arg)
    sub = commands.add_parser("lint")
    sub.add_argument("chart")
    sub.add_argument("values", nargs="?")
    for name in ["install", "upgrade", "status", "uninstall"]:
        sub = commands.add_parser(name)
        if name in ("install", "upgrade"):
            sub.add_argument("chart")
            sub.add_argument("values")
        sub.add_argument("release")
        sub.add_argument("--kubeconfig", required=True)
        sub.add_argument("--namespace", required=True)
    args = parser.parse_args()
    action = {
        "render": render,
        "lint": lint,
        "install": install,
        "upgrade": upgrade,
        "status": status,
        "uninstall": uninstall,
    }[args.command]
    try:
        result = action(args)
    except helm.HelmError as e:
        print(f"helm.py {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    if result is not None:
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
