#!/bin/sh
# Set up everything the project needs on a Debian 12 machine, as root, from the project's own
# files: the Debian packages listed in packaging/apt-packages.txt and a virtualenv (.venv) with
# the pinned Python requirements and the project itself. Safe to run again: it only installs
# what is missing.
#
#   scripts/bootstrap.sh          set up what is missing
#   scripts/bootstrap.sh --check  say what it would install and change nothing (exit 0)
#
# The control node must run Debian 12 (the package names and the pinned Python are Debian 12's):
# on anything else it stops before changing anything, saying so in one line (exit 2).
# VIOCLUSTER_ANY_PLATFORM=1 lets it go on elsewhere, at your own risk.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv=${VIOCLUSTER_VENV:-$here/.venv}
python=${PYTHON:-python3}

log() { printf 'bootstrap: %s\n' "$*" >&2; }

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) log "unknown argument '$1'; use: scripts/bootstrap.sh [--check]"; exit 2 ;;
esac

# Supported platform ----------------------------------------------------------------------------
# os-release(5): /etc/os-release, else /usr/lib/os-release; shell assignments.
os_release=/etc/os-release
[ -r "$os_release" ] || os_release=/usr/lib/os-release
if [ -r "$os_release" ]; then
    platform=$(. "$os_release"; printf '%s %s|%s' "${ID:-?}" "${VERSION_ID:-?}" "${PRETTY_NAME:-${NAME:-?} ${VERSION_ID:-}}")
else
    platform="? ?|an unknown system (no /etc/os-release)"
fi
if [ "${platform%%|*}" != "debian 12" ]; then
    if [ "${VIOCLUSTER_ANY_PLATFORM:-}" != 1 ]; then
        log "this machine runs ${platform#*|}; VioCluster supports Debian 12 on the control node (VIOCLUSTER_ANY_PLATFORM=1 goes on anyway, at your own risk)"
        exit 2
    fi
    log "continuing on ${platform#*|}, not Debian 12, because VIOCLUSTER_ANY_PLATFORM=1"
fi

# Debian packages -----------------------------------------------------------------------------
wanted=$(sed -e 's/#.*//' packaging/apt-packages.txt | tr -s ' \t' '\n' | sed '/^$/d' | sort -u)
missing=""
for pkg in $wanted; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*) ;;
        *) missing="$missing $pkg" ;;
    esac
done
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing="$missing python3-venv"
fi
if [ "$check" = 1 ] && [ -n "$missing" ]; then
    log "would install these Debian packages:$missing"
fi
if [ -n "$missing" ] && [ "$check" = 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        log "these Debian packages are missing:$missing; run as root or install them first"
        exit 2
    fi
    log "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Python virtualenv ---------------------------------------------------------------------------
stamp="$venv/.viocluster-stamp"
want_stamp=$(cat requirements.txt pyproject.toml switch/pyproject.toml switch/setup.py switch/violin/_datapath.c 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ]; then
    [ "$check" = 0 ] || log "the virtualenv $venv is up to date"
    exit 0
fi
if [ "$check" = 1 ]; then
    log "would (re)install the pinned Python requirements and the project into $venv"
    exit 0
fi
if [ ! -x "$venv/bin/python" ]; then
    log "creating the virtualenv $venv"
    "$python" -m venv "$venv"
fi
log "installing the pinned Python requirements"
"$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt
"$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
if [ -f switch/pyproject.toml ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e switch
fi
echo "$want_stamp" > "$stamp"
log "ready: $venv"
