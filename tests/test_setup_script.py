"""``scripts/setup.sh``: ``fxprune_install`` reinstalls when the venv's fxprune is not this clone's."""
import os
import subprocess
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake_venv(tmp_path: Path, origin: str) -> Path:
    """A venv whose ``python`` is a script: it reports ``origin`` as fxprune's location, fails the setuptools
    probe and logs pip calls."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        case "$*" in
            *find_spec*) echo "{origin}" ;;
            *"-m pip"*) echo "$*" >> "{venv}/pip.log" ;;
            *) exit 1 ;;
        esac
        """))
    python.chmod(0o755)
    return venv


def _install(venv: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, FXPRUNE_VENV=str(venv))
    return subprocess.run(["bash", "-c", f". '{ROOT}/scripts/setup.sh' && fxprune_install"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_install_runs_once_then_only_when_the_venv_points_elsewhere(tmp_path):
    venv = _fake_venv(tmp_path, f"{ROOT}/fxprune/__init__.py")
    log = venv / "pip.log"
    assert _install(venv).returncode == 0
    assert log.read_text().count("install") == 1
    assert _install(venv).returncode == 0, "a fresh stamp and this clone's fxprune need no reinstall"
    assert log.read_text().count("install") == 1

    # Same stamp, but someone ran `pip install -e` from another clone since.
    moved = _fake_venv(tmp_path / "other", "/elsewhere/fxprune/__init__.py")
    (moved / ".fxprune-install-stamp").write_text((venv / ".fxprune-install-stamp").read_text())
    res = _install(moved)
    assert res.returncode == 0, res.stderr
    assert (moved / "pip.log").read_text().count("install") == 1
    assert "-e .[test]" in (moved / "pip.log").read_text()
