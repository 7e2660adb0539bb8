"""Sweeps: one YAML file that expands into many runs (sizes x languages x arms x seeds), and run completion.

Shared by the SLURM job-array submitter (launchers/submit_sweep.py, launchers/sweep_task.py) and the local
sweep runner: both call `load_sweep` + `expand_sweep`, and skip a run when `run_is_finished(run_dir)`.

A sweep file (paths are relative to the working directory, like ``launchers/pretrain.py --config``):

    config: configs/tiny.yaml            # the base experiment config of every run
    out_root: runs/sweeps/tiny           # run folders: <out_root>/<run name>
    overrides: [lm.steps=200]            # optional: dotted overrides for every run, applied first
    axes:                                # the product of the axes, in this order (the last varies fastest)
      size:                              # axis name -> {label: overrides (a list, or one string)}
        tiny: [model.preset=tiny]
        small: [model.preset=small]
      arm:
        joint: [align.steps=0]
        prealign: []
      seed:
        s1: run.seed=1
        s2: run.seed=2
    exclude:                             # optional: drop every run whose labels match all the given ones
      - {size: small, seed: s2}
    sbatch: [--time=02:00:00]            # optional: sbatch options for every task (submit_sweep.py only)

A run's name joins its labels with "_" in axis order (``tiny_joint_s1``); labels may use letters, digits and
``.+-`` (no "_", so a name splits back into its labels). Its overrides are: ``overrides``, then each axis's,
then ``run.out_dir=<out_root>/<name>`` (so no override may set run.out_dir). Later overrides win.

Completion: the engine writes ``<run_dir>/DONE`` after the last phase and the export; the launch layer checks
it with `prealign_scale.engine.run_folder.run_is_finished`. A run folder without it is new, partial or
pre-empted.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prealign_scale.config_loader import yaml_lines  # the one YAML line map (file:line in every message)

LABEL_RE = re.compile(r"^[A-Za-z0-9.+-]+$")
AXIS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")
SWEEP_KEYS = ("config", "out_root", "overrides", "axes", "exclude", "sbatch")


class SweepError(ValueError):
    """A bad sweep file or task id; the message names the file, line and key."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name, the base config and the dotted overrides (run.out_dir last)."""

    name: str
    config: str
    overrides: tuple[str, ...]
    labels: tuple[tuple[str, str], ...] = ()  # (axis, label) in axis order

    @property
    def out_dir(self) -> str:
        """The run folder: the value of the last run.out_dir override (every sweep run has one)."""
        for item in reversed(self.overrides):
            if item.startswith("run.out_dir="):
                return item.split("=", 1)[1]
        raise ValueError(f"run {self.name}: no run.out_dir override")

    def launcher_args(self) -> list[str]:
        """Arguments of launchers/pretrain.py for this run."""
        return ["--config", self.config, *self.overrides]

    def to_dict(self) -> dict:
        return {"name": self.name, "config": self.config, "overrides": list(self.overrides),
                "labels": [list(x) for x in self.labels], "out_dir": self.out_dir}

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(name=d["name"], config=d["config"], overrides=tuple(d["overrides"]),
                   labels=tuple((str(a), str(v)) for a, v in d.get("labels", [])))


@dataclass(frozen=True)
class SweepConfig:
    path: str  # where it was read from (for messages)
    config: str
    out_root: str
    overrides: tuple[str, ...] = ()
    # ((axis, ((label, overrides), ...)), ...) in file order
    axes: tuple[tuple[str, tuple[tuple[str, tuple[str, ...]], ...]], ...] = ()
    exclude: tuple[tuple[tuple[str, str], ...], ...] = ()
    sbatch: tuple[str, ...] = field(default=())


# ----------------------------------------------------------------------------------------------------------
# reading


def _override_list(value: Any, where: str, what: str) -> tuple[str, ...]:
    """A list of 'section.key=value' strings (or one string); scalars from YAML are rejected with `where`."""
    items = [value] if isinstance(value, str) else ([] if value is None else value)
    if not isinstance(items, list):
        raise SweepError(f"{where}: {what}: expected a list of section.key=value overrides, got {value!r}")
    out = []
    for item in items:
        if not isinstance(item, str) or "=" not in item or item.split("=", 1)[0].strip().count(".") != 1:
            raise SweepError(f"{where}: {what}: {item!r} is not a section.key=value override (e.g. run.seed=2)")
        key = item.split("=", 1)[0].strip()
        if key == "run.out_dir":
            raise SweepError(f"{where}: {what}: {item!r}: run.out_dir is set per run by the sweep "
                             "(<out_root>/<run name>); set out_root instead")
        out.append(f"{key}={item.split('=', 1)[1]}")
    return tuple(out)


def parse_sweep(raw: Any, path: str = "<sweep>", lines: dict[tuple, int] | None = None) -> SweepConfig:
    """Check a parsed sweep document (see the module docstring) and return it typed."""
    lines = lines or {}

    def where(*keys) -> str:
        for n in range(len(keys), 0, -1):  # the deepest known line
            if keys[:n] in lines:
                return f"{path}:{lines[keys[:n]]}"
        return path

    if not isinstance(raw, dict):
        raise SweepError(f"{path}: the top level must be a mapping with keys {', '.join(SWEEP_KEYS)}")
    for key in raw:
        if key not in SWEEP_KEYS:
            raise SweepError(f"{where(key)}: {key}: unknown key (known: {', '.join(SWEEP_KEYS)})")
    for key in ("config", "out_root"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise SweepError(f"{where(key)}: {key}: required, a path (got {raw.get(key)!r})")
    overrides = _override_list(raw.get("overrides"), where("overrides"), "overrides")

    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, dict):
        raise SweepError(f"{where('axes')}: axes: expected a mapping axis -> {{label: overrides}}")
    axes = []
    for axis, values in axes_raw.items():
        axis = str(axis)
        if not AXIS_RE.match(axis):
            raise SweepError(f"{where('axes', axis)}: axes.{axis}: an axis name is a letter, then letters, "
                             "digits or -")
        if not isinstance(values, dict) or not values:
            raise SweepError(f"{where('axes', axis)}: axes.{axis}: expected a non-empty mapping "
                             "label -> overrides")
        labelled = []
        for label, ovr in values.items():
            label = str(label)
            if not LABEL_RE.match(label):
                raise SweepError(f"{where('axes', axis, label)}: axes.{axis}.{label}: a label may use letters, "
                                 "digits and . + - only (no _ : it separates labels in run names)")
            labelled.append((label, _override_list(ovr, where("axes", axis, label), f"axes.{axis}.{label}")))
        axes.append((axis, tuple(labelled)))

    exclude = []
    for i, rule in enumerate(raw.get("exclude") or []):
        if not isinstance(rule, dict) or not rule:
            raise SweepError(f"{where('exclude', i)}: exclude[{i}]: expected a mapping axis -> label")
        for axis, label in rule.items():
            known = dict(axes).get(str(axis))
            if known is None:
                raise SweepError(f"{where('exclude', i)}: exclude[{i}]: unknown axis {axis!r} "
                                 f"(axes: {', '.join(a for a, _ in axes)})")
            if str(label) not in dict(known):
                raise SweepError(f"{where('exclude', i)}: exclude[{i}]: axis {axis} has no label {label!r} "
                                 f"(labels: {', '.join(lab for lab, _ in known)})")
        exclude.append(tuple((str(a), str(v)) for a, v in rule.items()))

    sbatch = raw.get("sbatch") or []
    if not isinstance(sbatch, list) or not all(isinstance(s, str) and s.startswith("-") for s in sbatch):
        raise SweepError(f"{where('sbatch')}: sbatch: expected a list of sbatch options such as --time=01:00:00")
    return SweepConfig(path=path, config=raw["config"], out_root=raw["out_root"], overrides=overrides,
                       axes=tuple(axes), exclude=tuple(exclude), sbatch=tuple(sbatch))


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and check a sweep YAML file (errors name file:line and the key)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{path}: no such sweep file")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML: {exc}") from None
    return parse_sweep(raw, str(path), yaml_lines(root))


# ----------------------------------------------------------------------------------------------------------
# expansion


def expand_sweep(sweep: SweepConfig) -> list[RunSpec]:
    """All runs of the sweep, in a fixed order: the product of the axes (last axis fastest), minus excluded.

    Pure: reads no files. Raises SweepError when two runs would share a name (and so a run folder).
    """
    runs: list[RunSpec] = []
    names: set[str] = set()
    choices = [[(axis, label, ovr) for label, ovr in values] for axis, values in sweep.axes]
    for combo in itertools.product(*choices):
        labels = tuple((axis, label) for axis, label, _ in combo)
        if any(all(dict(labels)[a] == v for a, v in rule) for rule in sweep.exclude):
            continue
        name = "_".join(label for _, label in labels) or "run"
        if name in names:
            raise SweepError(f"{sweep.path}: two runs are named {name!r}")
        names.add(name)
        out_dir = f"{sweep.out_root.rstrip('/')}/{name}"
        overrides = sweep.overrides + tuple(o for _, _, ovr in combo for o in ovr) + (f"run.out_dir={out_dir}",)
        runs.append(RunSpec(name=name, config=sweep.config, overrides=overrides, labels=labels))
    if not runs:
        raise SweepError(f"{sweep.path}: the exclude rules leave no run")
    return runs


def check_runs(runs: list[RunSpec], where: str = "sweep") -> None:
    """Parse and type-check every run's config + overrides now (not hours later in an array task)."""
    from prealign_scale.config import ConfigError, parse_config

    for spec in runs:
        try:
            parse_config(spec.config, list(spec.overrides))
        except ConfigError as exc:
            raise SweepError(f"{where}: run {spec.name}: {exc}") from None


def single_run(config: str, overrides: list[str]) -> RunSpec:
    """A plain `--config X overrides` run as a RunSpec (its folder is the config's run.out_dir)."""
    from prealign_scale.config import ConfigError, parse_config

    try:
        cfg = parse_config(config, list(overrides))
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    out_dir = cfg.run.out_dir
    extra = () if any(o.startswith("run.out_dir=") for o in overrides) else (f"run.out_dir={out_dir}",)
    return RunSpec(name=Path(out_dir).name, config=config, overrides=(*overrides, *extra))


# ----------------------------------------------------------------------------------------------------------
# a frozen task list (what a submitted job array runs), and task-id resolution


def save_tasks(runs: list[RunSpec], out_root: str | Path, source: str = "") -> Path:
    """Write `<out_root>/sweep-<hash>.json` (content-addressed: a later, different submission of the same sweep
    gets a new file, so the pending tasks of an earlier array keep their meaning). Returns its path."""
    doc = {"source": source, "runs": [r.to_dict() for r in runs]}
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(out_root) / f"sweep-{digest}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return path


def load_runs(path: str | Path) -> list[RunSpec]:
    """The runs of a frozen task list (sweep-*.json) or of a sweep YAML file (expanded now)."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            doc = json.loads(path.read_text())
            return [RunSpec.from_dict(d) for d in doc["runs"]]
        except FileNotFoundError:
            raise SweepError(f"{path}: no such task list") from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise SweepError(f"{path}: not a sweep task list ({exc})") from None
    return expand_sweep(load_sweep(path))


def task_id_from_env(env: dict | None = None) -> int:
    """SLURM_ARRAY_TASK_ID as an int (SweepError when it is missing or not a number)."""
    env = os.environ if env is None else env
    raw = env.get("SLURM_ARRAY_TASK_ID")
    if raw is None:
        raise SweepError("SLURM_ARRAY_TASK_ID is not set: not a job-array task (pass --task-id N)")
    try:
        return int(raw)
    except ValueError:
        raise SweepError(f"SLURM_ARRAY_TASK_ID={raw!r} is not an integer") from None


def task_run(runs: list[RunSpec], task_id: int, where: str = "sweep") -> RunSpec:
    if not 0 <= task_id < len(runs):
        raise SweepError(f"{where}: task id {task_id} is out of range: the sweep has {len(runs)} runs "
                         f"(ids 0..{len(runs) - 1})")
    return runs[task_id]
