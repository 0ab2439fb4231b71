"""Readers: model and cluster specs (preset names, our YAML/JSON, an HF config.json), plan files,
and measured profiles.

Every failure is a ``PlanError`` with one readable line: a missing file, a
malformed document, an unknown key, a bad value, or an unknown preset with the
closest preset names suggested.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Hashable
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from profiles.errors import PlanError
from profiles.files import read_text, unreadable_value
from profiles.gpu_families import GpuFamilies, with_family_constants
from profiles.hf_config import _first_error, model_from_hf_config
from profiles.profile_schema import COMM_PROFILE_SCHEMA_VERSION, PROFILE_SCHEMA_VERSION, CommProfile, ProfileFile
from profiles.schema import ClusterSpec, ModelSpec, Plan
from profiles.stack_schema import StackSpec

PRESET_DIR = Path(__file__).parent
PUBLIC_RUNS_CSV = PRESET_DIR / "calibration" / "public_runs.csv"
REGRESSION_DIR = PRESET_DIR / "regression"
GPU_FAMILIES_YAML = PRESET_DIR / "gpu_families.yaml"
T = TypeVar("T", bound=BaseModel)


DEFAULT_STACK = "ppplan-torch"
# libyaml's parser where PyYAML was built with it (about 10x faster on the presets), the same safe
# constructors either way: the published-runs corpus alone loads a cluster file per row.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKey(yaml.YAMLError):
    """A mapping that states one key twice (YAML 1.2 and JSON require keys to be unique; PyYAML and
    ``json`` keep the last value and drop the first without a word)."""

    def __init__(self, key: object, line: int | None) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line = key, line


class UniqueKeyLoader(SAFE_LOADER):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a mapping that states a key twice (merge keys ``<<`` aside: a key
    stated beside a merge overrides the merged one, as YAML says)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the safe constructor refuses it next
            if key in seen:
                raise DuplicateKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict:
    """``json.loads``' object hook refusing a key stated twice (``DuplicateKey``, no line)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKey(key, None)
        out[key] = value
    return out


def preset_names(kind: str) -> list[str]:
    """Sorted preset names of ``kind`` ("models", "clusters" or "stacks")."""
    return sorted(p.stem for p in (PRESET_DIR / kind).glob("*.yaml"))


def read_document(path: Path) -> Any:
    """Parse a YAML or JSON file (JSON is YAML) into Python data."""
    text = read_text(path)
    try:
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=_unique_json_object)
        return yaml.load(text, Loader=UniqueKeyLoader)
    except RecursionError:
        raise PlanError(f"{path} nests too deeply to be a ppplan file") from None
    except DuplicateKey as exc:
        where = f" (line {exc.line})" if exc.line is not None else ""
        raise PlanError(f"{path}: key '{exc.key}' is stated twice{where}: keep one") from None
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", getattr(exc, "lineno", None))
        where = f" (line {line + 1 if hasattr(exc, 'problem_mark') else line})" if line is not None else ""
        raise PlanError(f"malformed {path.suffix.lstrip('.') or 'YAML'} in {path}{where}") from None
    except ValueError as exc:  # a value the parser cannot convert: an integer of more digits than Python reads
        raise PlanError(f"{path}: {unreadable_value(exc)}") from None


def validate_as(cls: type[T], data: Any, source: str) -> T:
    """Validate ``data`` as ``cls``; the first problem becomes a one-line ``PlanError``."""
    if not isinstance(data, dict):
        raise PlanError(f"{source}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise PlanError(f"{source}: unknown key '{loc}'") from None
        if first["type"] == "missing":
            raise PlanError(f"{source}: missing key '{loc}'") from None
        message = first["msg"].removeprefix("Value error, ")
        raise PlanError(f"{source}: {loc}: {message}" if loc else f"{source}: {message}") from None
    except ValueError as exc:
        raise PlanError(f"{source}: {_first_error(exc)}") from None


def _unknown_preset(kind: str, name: str) -> PlanError:
    names = preset_names(kind)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; presets: {', '.join(names)}"
    noun = kind.rstrip("s")
    return PlanError(f"unknown {noun} preset '{name}' (and no such file){hint}")


def _resolve(kind: str, spec: str) -> Path:
    path = Path(spec)
    if path.suffix in {".yaml", ".yml", ".json"} or path.exists():
        return path
    preset = PRESET_DIR / kind / f"{spec}.yaml"
    if preset.is_file():
        return preset
    raise _unknown_preset(kind, spec)


def _is_hf_config(data: Any) -> bool:
    return isinstance(data, dict) and ("model_type" in data or "architectures" in data or "n_embd" in data)


def is_hf_config(spec: str) -> bool:
    """Whether ``--model spec`` names a Hugging Face ``config.json`` (not a preset or our YAML)."""
    path = Path(spec)
    if path.suffix != ".json" or not path.is_file():
        return False
    return _is_hf_config(read_document(path))


def load_model(spec: str) -> ModelSpec:
    """A model preset name, our YAML/JSON, or a Hugging Face config.json."""
    path = _resolve("models", spec)
    data = read_document(path)
    if _is_hf_config(data):
        # a checkpoint's config.json is named by its directory; a config saved under its own name by that name
        name = data.get("_name_or_path") or (path.parent.name if path.name == "config.json" else path.stem) or path.stem
        return model_from_hf_config(data, name=str(name), source=str(path))
    return validate_as(ModelSpec, data, str(path))


def load_cluster(spec: str) -> ClusterSpec:
    """A cluster preset name or our YAML, with its GPU family's constants for every efficiency
    field the file does not set (``profiles.gpu_families``)."""
    path = _resolve("clusters", spec)
    cluster = validate_as(ClusterSpec, read_document(path), str(path))
    return with_family_constants(cluster, load_gpu_families().family_of(cluster.gpu.name))


@lru_cache(maxsize=4)
def load_gpu_families(path: Path = GPU_FAMILIES_YAML) -> GpuFamilies:
    """The GPU families file (``profiles/gpu_families.yaml``), read once."""
    return validate_as(GpuFamilies, read_document(path), str(path))


def load_stack(spec: str = DEFAULT_STACK) -> StackSpec:
    """A stack preset name (``profiles/stacks/``) or our YAML; an unknown name lists the presets."""
    path = Path(spec)
    a_file = path.suffix in {".yaml", ".yml", ".json"}
    if not a_file and spec not in preset_names("stacks"):  # a name, never a path built from it
        raise PlanError(f"unknown stack '{spec}': use one of {', '.join(preset_names('stacks'))} (or a stack YAML file)")
    stack = validate_as(StackSpec, read_document(_resolve("stacks", spec)), str(_resolve("stacks", spec)))
    if a_file and _changed_preset(stack):
        # a plan names its stack, and every later command (explain, simulate, launch) checks it against that preset
        raise PlanError(f"{spec}: name '{stack.name}' is a shipped stack preset, and this file differs from it: "
                        "give your stack a name of its own")
    return stack


def load_plan(path: str | Path) -> Plan:
    """A plan file (``ppplan search --out``), or a one-line ``PlanError``; a stack it carries is checked too."""
    plan = validate_as(Plan, read_document(Path(path)), str(path))
    if plan.stack_spec is not None:
        try:
            plan_stack(plan)
        except PlanError as exc:
            raise PlanError(f"{path}: {exc}") from None
    return plan


def plan_stack(plan: Plan) -> StackSpec:
    """The stack a plan was priced on: the one it carries (``Plan.stack_spec``, a stack file's), else the preset its
    ``config.stack`` names."""
    if plan.stack_spec is None:
        return load_stack(plan.config.stack)
    stack = validate_as(StackSpec, plan.stack_spec, "stack_spec")
    if stack.name != plan.config.stack:
        raise PlanError(f"stack_spec is stack '{stack.name}' but config.stack is '{plan.config.stack}'")
    if _changed_preset(stack):
        raise PlanError(f"stack_spec is named '{stack.name}', a shipped stack preset, and differs from it")
    return stack


def _changed_preset(stack: StackSpec) -> bool:
    """Whether ``stack`` takes a shipped preset's name with other contents (a plan names its stack, and its readers
    would judge it by that preset)."""
    return stack.name in preset_names("stacks") and stack != load_stack(stack.name)


def carried_stack(stack: StackSpec) -> dict | None:
    """What a plan carries of the stack it was priced on (``Plan.stack_spec``): nothing for a shipped preset, which
    its name finds again; a stack file's whole content otherwise."""
    if stack.name in preset_names("stacks") and not _changed_preset(stack):
        return None
    return stack.model_dump(mode="json")


def read_profile(path: str | Path) -> ProfileFile:
    """A ``ppplan profile`` file, or a one-line ``PlanError``."""
    path = Path(path)
    data = read_document(path)
    if isinstance(data, dict) and "measurements" in data and "layers" not in data:
        raise PlanError(f"{path} is a communication profile (ppplan profile-comm); pass it as --comm-profile")
    if isinstance(data, dict) and data.get("schema_version", PROFILE_SCHEMA_VERSION) != PROFILE_SCHEMA_VERSION:
        raise PlanError(f"{path}: schema_version {data['schema_version']!r}, this ppplan reads {PROFILE_SCHEMA_VERSION}: re-run ppplan profile")
    profile = validate_as(ProfileFile, data, str(path))
    if not profile.layers:
        raise PlanError(f"{path}: the profile has no layer measurements")
    return profile


def read_comm_profile(path: str | Path) -> CommProfile:
    """A ``ppplan profile-comm`` file, or a one-line ``PlanError``."""
    path = Path(path)
    data = read_document(path)
    if isinstance(data, dict) and "layers" in data and "measurements" not in data:
        raise PlanError(f"{path} is a layer profile (ppplan profile); pass it as --profile")
    if isinstance(data, dict) and data.get("schema_version", COMM_PROFILE_SCHEMA_VERSION) != COMM_PROFILE_SCHEMA_VERSION:
        raise PlanError(f"{path}: schema_version {data['schema_version']!r}, this ppplan reads {COMM_PROFILE_SCHEMA_VERSION}: re-run ppplan profile-comm")
    return validate_as(CommProfile, data, str(path))
