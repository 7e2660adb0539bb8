"""Is a checkpoint folder whole? Checksums, the completeness marker, and what a failed write means.

Besides DeepSpeed's files (one model-states and one optimizer-states file per rank), config.yaml and
state.json, a complete tag folder holds

    manifest.json   {"tag": ..., "files": {"<name>": {"bytes": n, "sha256": "<hex>"}, ...}}: every file above
    COMPLETE        {"tag": ..., "manifest_sha256": "<hex>"}: the completeness marker, written last

Each rank hashes (and fsyncs) the files it wrote itself, right after writing them; rank 0 gathers those
digests after all ranks are done, adds config.yaml and state.json, and writes manifest.json, then COMPLETE
(checkpoint.py). A tag is intact when COMPLETE names manifest.json's digest and every listed file exists
with the recorded size and sha256. A folder written before checksums existed (state.json, but neither
manifest.json nor COMPLETE) is accepted as "legacy", unverified.

Pure functions of the filesystem, no collectives: checkpoint.py splits the hashing over the ranks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
MARKER = "COMPLETE"
STATE = "state.json"
_CHUNK = 8 << 20
_PROBE_BYTES = 1 << 20  # the test write that tells "disk full" from other write errors


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: Path, *, fsync: bool = False) -> dict:
    """{"bytes", "sha256"} of a file; with `fsync`, also force it to stable storage (it was just written)."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
        if fsync:
            os.fsync(f.fileno())
    return {"bytes": n, "sha256": h.hexdigest()}


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary name, fsync, rename: readers see the old or the new file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: not every filesystem allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_manifest_and_marker(folder: Path, tag: str, files: dict[str, dict]) -> None:
    """manifest.json (the digests of `files`), then COMPLETE naming manifest.json's own digest."""
    text = json.dumps({"tag": tag, "files": dict(sorted(files.items()))}, indent=1) + "\n"
    write_atomic(folder / MANIFEST, text)
    write_atomic(folder / MARKER, json.dumps({"tag": tag, "manifest_sha256": sha256_bytes(text.encode())}) + "\n")


def read_manifest(folder: Path) -> tuple[str | None, dict[str, dict] | None]:
    """(problem, files). problem None and files None: a legacy folder (no checksums to check).

    Checks the marker and the manifest only (cheap); the files themselves: `check_files`.
    """
    if not folder.is_dir():
        return f"{folder} does not exist", None
    marker, manifest = folder / MARKER, folder / MANIFEST
    if not marker.is_file():
        if not manifest.is_file() and (folder / STATE).is_file():
            return None, None  # written before checksums existed: accepted unverified
        return f"no completeness marker {MARKER} (the checkpoint was never finished, or the marker was lost)", None
    try:
        mark = json.loads(marker.read_text())
        text = manifest.read_bytes()
        want = mark["manifest_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MARKER} or {MANIFEST}: {exc}", None
    if sha256_bytes(text) != want:
        return f"{MANIFEST} does not match the digest in {MARKER} (corrupted)", None
    try:
        files = json.loads(text)["files"]
    except (ValueError, KeyError) as exc:
        return f"{MANIFEST}: {exc}", None
    if MANIFEST in files or not files:
        return f"{MANIFEST} lists no files", None
    return None, files


def check_files(folder: Path, files: dict[str, dict], names: list[str]) -> list[str]:
    """Problems of the listed files of a manifest: missing, wrong size (truncated), wrong sha256."""
    problems = []
    for name in names:
        want, path = files[name], folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size != want["bytes"]:
            problems.append(f"{name} has {size} bytes, the manifest says {want['bytes']} (truncated or rewritten)")
            continue
        if file_digest(path)["sha256"] != want["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (corrupted)")
    return problems


def _probe_write(folder: Path) -> OSError | None:
    """Try to write (and fsync) _PROBE_BYTES in `folder`; the OSError it raises, if any."""
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
        return None
    except OSError as exc:
        return exc
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def _space(folder: Path) -> str:
    try:
        u = shutil.disk_usage(folder)
    except OSError:
        return "free space unknown"
    return f"{u.free / 2**20:.1f} MiB free of {u.total / 2**20:.1f} MiB on that filesystem"


def describe_write_error(exc: BaseException, path: Path) -> str:
    """One line: why writing `path` failed (the OS reason when there is one), and the free space there.

    torch.save reports a full disk as a bare RuntimeError (e.g. "unexpected pos 704 vs 598"); a test write
    into the same folder recovers the OS reason (ENOSPC, EDQUOT, EROFS, ...).
    """
    folder = path.parent if path.parent.is_dir() else path.parent.parent
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    code = exc.errno if isinstance(exc, OSError) and exc.errno else None
    if code is None:
        probe = _probe_write(folder)
        if probe is not None and probe.errno:
            code = probe.errno
            first = f"a test write failed the same way after {type(exc).__name__}: {first}"
    if code is not None:
        name = errno.errorcode.get(code, str(code))
        reason = f"{os.strerror(code)} ({name})" + (f"; {first}" if not isinstance(exc, OSError) else "")
    else:
        reason = f"{type(exc).__name__}: {first}"
    return f"{reason}, while writing {path} ({_space(folder)})"
