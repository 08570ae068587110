#!/bin/sh
# Set up everything the project needs on a Debian 12 machine, as root, from the project's own
# files: the Debian packages listed in packaging/apt-packages.txt and a virtualenv (.venv) with
# the pinned Python requirements and the project itself. Safe to run again: it only installs
# what is missing.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
venv=${VIOCLUSTER_VENV:-$here/.venv}
python=${PYTHON:-python3}

log() { printf 'bootstrap: %s\n' "$*" >&2; }

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
if [ -n "$missing" ]; then
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
