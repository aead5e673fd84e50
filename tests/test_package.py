"""The installable package: the wheel carries every module and config, and its programs and Python API work
from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from setuptools import find_packages
from setuptools.config.pyprojecttoml import read_configuration

from tests.conftest import REPO_ROOT

# The Python API on a raw torchvision model and a plain DataLoader, as a user outside the checkout calls it.
# The one place of this test that names the API.
API_EXAMPLE = """
import torch, torchvision
from torch.utils.data import DataLoader, TensorDataset
from eroseg_at import evaluate_model
from eroseg_at.configs import CONF_DIR

network = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
    weights=None, weights_backbone=None, num_classes=3
)
images, labels = torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4, 32, 32))
loader = DataLoader(TensorDataset(images, labels), batch_size=2)
report = evaluate_model(network, loader, suite="quick", overrides=["device=cpu", "suite.iterations=null"])
print("conf:", CONF_DIR)
print("summary:", report.summary())
print("rows:", ", ".join(f"{row.key}={100 * row.miou:.1f}" for row in report.rows))
"""


def test_the_package_list_names_every_package_of_the_checkout():
    # pyproject.toml lists the packages (setuptools cannot discover eroseg_at.conf, mapped from conf/): a new
    # subpackage missing there would be missing from the wheel.
    listed = read_configuration(REPO_ROOT / "pyproject.toml")["tool"]["setuptools"]["packages"]
    assert sorted(listed) == sorted(
        [*find_packages(str(REPO_ROOT), include=["eroseg_at*"]), "eroseg_at.conf"]
    )


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    completed = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
def test_the_wheel_runs_the_programs_and_the_api_from_outside_the_checkout(tmp_path):
    # Built from a copy of what the build reads, so that it leaves nothing (build/, *.egg-info) in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, source / name)
    for name in ("eroseg_at", "conf"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    run(
        *pip,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        tmp_path / "dist",
        source,
        cwd=tmp_path,
    )
    (wheel,) = (tmp_path / "dist").glob("eroseg_at-*.whl")
    contents = set(zipfile.ZipFile(wheel).namelist())
    package = REPO_ROOT / "eroseg_at"
    expected = {f"eroseg_at/{path.relative_to(package).as_posix()}" for path in package.rglob("*.py")}
    expected |= {
        f"eroseg_at/conf/{path.relative_to(REPO_ROOT / 'conf').as_posix()}"
        for path in (REPO_ROOT / "conf").rglob("*.yaml")
    }
    assert not expected - contents, sorted(expected - contents)
    assert "eroseg_at/py.typed" in contents and any(name.endswith("licenses/LICENSE") for name in contents)

    # Installed on its own; the dependencies come from this interpreter's environment.
    site = tmp_path / "site"
    run(*pip, "install", "--no-deps", "--target", site, wheel, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONSAFEPATH", None)
    help_text = run(site / "bin" / "eroseg-eval", "--help", cwd=elsewhere, env=env)
    assert "evaluate is powered by Hydra" in help_text and "suite: " in help_text, help_text
    help_text = run(site / "bin" / "eroseg-train", "--help", cwd=elsewhere, env=env)
    assert "train is powered by Hydra" in help_text and "attack: " in help_text, help_text

    output = run(sys.executable, "-c", API_EXAMPLE, cwd=elsewhere, env=env)
    assert f"conf: {site / 'eroseg_at' / 'conf'}" in output, output
    assert "rows: clean=" in output and "worst" in output, output
    assert "summary: module LRASPP (`LRASPP`): robust mIoU " in output and "% at 8/255" in output, output
