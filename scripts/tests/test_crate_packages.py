"""Every published crate ships the license its metadata names (Apache-2.0): `cargo package`
includes the LICENSE file. Each crate directory holds a link to the repository's LICENSE."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def published_crates() -> list[str]:
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        members = tomllib.load(f)["workspace"]["members"]
    crates = []
    for member in members:
        with open(os.path.join(ROOT, member, "Cargo.toml"), "rb") as f:
            package = tomllib.load(f)["package"]
        if package.get("publish", True) is not False:
            crates.append(member)
    return crates


@pytest.mark.parametrize("crate", published_crates())
def test_crate_directory_has_the_license(crate: str) -> None:
    path = os.path.join(ROOT, crate, "LICENSE")
    assert os.path.isfile(path), f"{crate}/LICENSE is missing"
    with open(path, "rb") as got, open(os.path.join(ROOT, "LICENSE"), "rb") as want:
        assert got.read() == want.read(), f"{crate}/LICENSE differs from the repository's LICENSE"


@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs cargo")
def test_cargo_package_lists_the_license() -> None:
    out = subprocess.run(
        ["cargo", "package", "--list", "--allow-dirty", "-p", "loopai-core"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert "LICENSE" in out, out
