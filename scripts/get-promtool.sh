#!/usr/bin/env bash
# Install promtool into DIR (usage: scripts/get-promtool.sh DIR).
#
# The alert-rule tests (tests/deploy/test_alert_rules.py) evaluate config/alerts.yml with
# `promtool test rules`. PyPI has no package shipping promtool; Debian's `prometheus` package
# does. We only download that package and unpack usr/bin/promtool from it: installing it would
# also set up a Prometheus server (a system user, a service) that nothing here needs.
#
# When promtool is already on PATH (e.g. a distribution package), that one is linked instead.
# apt verifies the package's signature; the binary must then answer `promtool --version`.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi

target_dir="$1"
mkdir -p "$target_dir"

existing="$(command -v promtool || true)"
if [[ -n "$existing" && "$existing" != "$(cd "$target_dir" && pwd)/promtool" ]]; then
    ln -sf "$existing" "$target_dir/promtool"
    "$target_dir/promtool" --version | head -n 1
    exit 0
fi

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "get-promtool: no promtool on PATH and no apt-get/dpkg-deb to fetch Debian's" \
        "'prometheus' package; install promtool (Prometheus 2.x) and run make tools again" >&2
    exit 1
fi

work="$(mktemp -d)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
# apt downloads as its unprivileged _apt user when it can write the directory.
chmod 0755 "$work"

download() { (cd "$work" && apt-get download -qq prometheus); }

echo "get-promtool: downloading Debian's prometheus package" >&2
if ! download 2>"$work/apt.log"; then
    # A fresh machine has no package lists yet.
    if [[ "$(id -u)" -eq 0 ]]; then
        apt-get update -qq
        download 2>"$work/apt.log" || { cat "$work/apt.log" >&2; exit 1; }
    else
        cat "$work/apt.log" >&2
        echo "get-promtool: 'apt-get download prometheus' failed; run 'apt-get update' as root" \
            "or install promtool, then run make tools again" >&2
        exit 1
    fi
fi

debs=("$work"/prometheus_*.deb)
if [[ ${#debs[@]} -ne 1 || ! -f "${debs[0]}" ]]; then
    echo "get-promtool: expected one prometheus_*.deb in $work" >&2
    exit 1
fi

dpkg-deb --fsys-tarfile "${debs[0]}" | tar -x -C "$work" ./usr/bin/promtool
install -m 0755 "$work/usr/bin/promtool" "$target_dir/.promtool.tmp"
mv -f "$target_dir/.promtool.tmp" "$target_dir/promtool"
"$target_dir/promtool" --version | head -n 1
