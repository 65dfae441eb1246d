#!/usr/bin/env bash
# Install one binary of a Debian package into DIR (usage: scripts/get-debian-tool.sh PACKAGE
# BINARY DIR), e.g. `pgbouncer pgbouncer .venv/bin` or `etcd-server etcd .venv/bin`.
#
# The topology tests (tests/topology) need PgBouncer and etcd, which PyPI does not carry and
# which Debian does. Installing the packages would also set up system services, users and
# postgresql-common that nothing here needs, and needs root; so the package is only downloaded
# (apt verifies its signature) and unpacked with dpkg-deb into .venv/tools/PACKAGE, next to DIR,
# and the binary is linked into DIR.
#
# A shared library that the binary needs and that the machine lacks (a fresh machine has no
# c-ares, which pgbouncer links) is taken from the package's own library dependencies, unpacked
# the same way: only the missing files are kept, in .venv/tools/PACKAGE/shlibs, and DIR/BINARY is
# then a small wrapper that puts that folder on LD_LIBRARY_PATH. The system's libc is never
# replaced. The binary must then load with no library missing.
set -euo pipefail

if [[ $# -ne 3 ]]; then
    echo "usage: $0 PACKAGE BINARY DIR" >&2
    exit 2
fi

package="$1"
binary="$2"
target_dir="$3"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"
tools_dir="$(dirname "$target_dir")/tools/$package"

for tool in apt-get dpkg-deb ldd; do
    if ! command -v "$tool" >/dev/null; then
        echo "get-debian-tool: $tool is missing; this script needs a Debian-like system" >&2
        exit 1
    fi
done

work="$(mktemp -d)"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
# apt downloads as its unprivileged _apt user when it can write the directory.
chmod 0755 "$work"

# Downloads the named packages into $work/debs-$1 (a label), updating the package lists once
# when the download fails, as it does on a machine whose lists are missing or stale.
fetch() {
    local label="$1"
    shift
    local dest="$work/debs-$label"
    mkdir -p "$dest"
    chmod 0755 "$dest"
    [[ "$(id -u)" -eq 0 ]] && id _apt >/dev/null 2>&1 && chown _apt "$dest"
    if ! (cd "$dest" && apt-get download -qq "$@") 2>"$work/apt.log"; then
        if [[ "$(id -u)" -eq 0 ]]; then
            apt-get update -qq
            (cd "$dest" && apt-get download -qq "$@") 2>"$work/apt.log" || {
                cat "$work/apt.log" >&2
                exit 1
            }
        else
            cat "$work/apt.log" >&2
            echo "get-debian-tool: 'apt-get download $*' failed; run 'apt-get update' as root" \
                "and run make tools again" >&2
            exit 1
        fi
    fi
}

echo "get-debian-tool: downloading Debian's $package package" >&2
fetch main "$package"
debs=("$work"/debs-main/"${package}"_*.deb)
if [[ ${#debs[@]} -ne 1 || ! -f "${debs[0]}" ]]; then
    echo "get-debian-tool: expected one ${package}_*.deb" >&2
    exit 1
fi

rm -rf "$tools_dir"
mkdir -p "$tools_dir"
dpkg-deb -x "${debs[0]}" "$tools_dir"
exe=""
for dir in usr/bin usr/sbin bin sbin; do
    if [[ -x "$tools_dir/$dir/$binary" ]]; then
        exe="$tools_dir/$dir/$binary"
        break
    fi
done
if [[ -z "$exe" ]]; then
    echo "get-debian-tool: $binary is not in the $package package" >&2
    exit 1
fi
# dpkg-deb keeps the package's dates; make compares DIR/BINARY with its prerequisites, so the
# binary is dated now, or every make run would install it again.
touch "$exe"

# The libraries the dynamic loader cannot find; ldd fails on a static binary, which needs none.
missing_libs() { { ldd "$exe" 2>/dev/null || true; } | awk '/=> not found/ { print $1 }'; }
missing="$(missing_libs)"

if [[ -n "$missing" ]]; then
    echo "get-debian-tool: not on this machine: $(echo "$missing" | tr '\n' ' ')" >&2
    # The package's library dependencies (first alternative of each, without versions), less
    # libc6: a second libc beside the system's loader would break every binary it touches.
    deps="$(dpkg-deb -f "${debs[0]}" Depends |
        tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/[[:space:]]//g' |
        grep '^lib' | grep -v '^libc6$' || true)"
    if [[ -z "$deps" ]]; then
        echo "get-debian-tool: $package declares no library package to take them from" >&2
        exit 1
    fi
    # shellcheck disable=SC2086 # one package name a word
    fetch libs $deps
    mkdir -p "$work/libs" "$tools_dir/shlibs"
    for deb in "$work"/debs-libs/*.deb; do
        dpkg-deb -x "$deb" "$work/libs"
    done
    for lib in $missing; do
        found="$(find "$work/libs" -name "$lib" \( -type f -o -type l \) | head -n 1)"
        if [[ -z "$found" ]]; then
            echo "get-debian-tool: $lib is in none of: $deps" >&2
            exit 1
        fi
        # -L: the soname is a link to the versioned file; keep the file under the soname.
        cp -L "$found" "$tools_dir/shlibs/$lib"
    done
    still="$(LD_LIBRARY_PATH="$tools_dir/shlibs" missing_libs)"
    if [[ -n "$still" ]]; then
        echo "get-debian-tool: still missing: $still" >&2
        exit 1
    fi
    tmp="$target_dir/.$binary.tmp"
    cat >"$tmp" <<EOF
#!/bin/sh
# Written by scripts/get-debian-tool.sh: $binary from Debian's $package package, with the
# shared libraries this machine lacks from $tools_dir/shlibs.
LD_LIBRARY_PATH="$tools_dir/shlibs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$exe" "\$@"
EOF
    chmod 0755 "$tmp"
    mv -f "$tmp" "$target_dir/$binary"
else
    ln -sfn "$exe" "$target_dir/$binary"
fi

echo "get-debian-tool: $target_dir/$binary -> $exe ($(dpkg-deb -f "${debs[0]}" Version))" >&2
