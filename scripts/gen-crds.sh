#!/usr/bin/env bash
# Regenerates crds/ and docs/crd-reference.md from the Rust types. tests/crds_sync.rs fails until this is run
# after a change to src/resources/.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f crds/*.yaml
cargo run --quiet -- crds --out-dir crds
rm -f charts/idplane/crds/*.yaml
cp crds/*.yaml charts/idplane/crds/
mkdir -p docs
cargo run --quiet -- crds --reference > docs/crd-reference.md
