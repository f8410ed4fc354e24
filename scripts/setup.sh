#!/usr/bin/env bash
# Set up fxprune and run the demo:  bash scripts/setup.sh
#
# Creates (or reuses) a virtual environment outside the clone, at
# ${FXPRUNE_VENV:-$HOME/.cache/fxprune/venv}, installs the project with `pip install -e ".[test]"`
# (only when the venv is new, the clone moved, pyproject.toml changed or the venv's fxprune is another
# clone's), prepares an offline Ultralytics config folder, then runs `fxprune demo` with any extra
# arguments passed through.
#
# Sourcing this file (as .ci/run does) only defines the functions below.

fxprune_venv_dir() {
    echo "${FXPRUNE_VENV:-$HOME/.cache/fxprune/venv}"
}

# Create the venv if needed and (re)install the project when the install stamp is stale.
fxprune_install() {
    local root venv python stamp want flags=()
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    venv="$(fxprune_venv_dir)"
    python="${PYTHON:-python3}"
    if [[ ! -x "$venv/bin/python" ]]; then
        "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
            echo "fxprune needs Python >= 3.10 (set PYTHON=/path/to/python3.x)" >&2
            return 1
        }
        echo "creating virtual environment in $venv" >&2
        mkdir -p "$(dirname "$venv")"
        "$python" -m venv "$venv" || {
            echo "could not create a venv (on Debian/Ubuntu: apt-get install python3-venv)" >&2
            return 1
        }
    fi
    stamp="$venv/.fxprune-install-stamp"
    want="$( (echo "$root"; cat "$root/pyproject.toml") | sha256sum | cut -d' ' -f1)"
    # The stamp can be stale when someone reinstalled by hand from another clone: also check that the
    # venv's fxprune is this clone's.
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] \
        || [[ "$(cd / && "$venv/bin/python" -c 'import importlib.util as u, os; s = u.find_spec("fxprune")
print(os.path.realpath(s.origin) if s else "")' 2>/dev/null)" != "$(cd "$root" && pwd -P)/fxprune/__init__.py" ]]
    then
        echo "installing fxprune into $venv (first run downloads torch; this takes a while)" >&2
        # Reuse an installed setuptools so reinstalls also work without network access.
        if "$venv/bin/python" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 70)' \
            2>/dev/null; then
            flags+=(--no-build-isolation)
        fi
        (cd "$root" && "$venv/bin/python" -m pip install -q --disable-pip-version-check ${flags[@]+"${flags[@]}"} \
            -e ".[test]") || return 1
        echo "$want" > "$stamp"
    fi
}

# Offline Ultralytics settings with a local TrueType font, so nothing tries to download fonts.
fxprune_yolo_env() {
    local venv cfg font
    venv="$(fxprune_venv_dir)"
    cfg="${YOLO_CONFIG_DIR:-$venv/yolo-config}"
    mkdir -p "$cfg"
    if [[ ! -f "$cfg/Arial.ttf" || ! -f "$cfg/Arial.Unicode.ttf" ]]; then
        font="$("$venv/bin/python" -c 'import matplotlib, os
print(os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf"))')" \
            || return 1
        cp "$font" "$cfg/Arial.ttf"
        cp "$font" "$cfg/Arial.Unicode.ttf"
    fi
    export YOLO_CONFIG_DIR="$cfg"
    export YOLO_OFFLINE=1
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    fxprune_install
    fxprune_yolo_env
    # shellcheck disable=SC1091
    . "$(fxprune_venv_dir)/bin/activate"
    fxprune demo "$@"
fi
