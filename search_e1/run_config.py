"""The run's config on disk: ``--config`` files read first, ``config.yaml`` recorded once, a changed
resume refused (or recorded in ``config_changes.log`` with ``evolver.accept_config_change``)."""

from __future__ import annotations

import datetime
import logging
from contextlib import suppress
from pathlib import Path
from typing import Any

import yaml

from search_e1.errors import UserInputError

log = logging.getLogger("search_e1")

STATE_FILE = "evolver_state.json"
"""The Evolver's resumable state, in the run directory."""


RESUME_MAY_CHANGE = ("config", "evolver.run_dir", "evolver.rounds", "evolver.resume", "evolver.accept_config_change",
                     "evolver.eval_batch_size", "evolver.malloc_mmap_threshold_mb", "rollout.vllm.",
                     "trainer.enable_progress_bar")
"""Config keys (or prefixes) a resumed run may change without `evolver.accept_config_change`:
the schedule's length, where the run directory now lives (a moved run resumes), and settings that
do not change what is trained."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_changes(saved: str, new: str) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs between two dumped configs, except
    those in `RESUME_MAY_CHANGE`."""
    old_keys, new_keys = _flatten(yaml.safe_load(saved) or {}), _flatten(yaml.safe_load(new) or {})
    changed = []
    for key in sorted(set(old_keys) | set(new_keys)):
        if key.startswith(RESUME_MAY_CHANGE) or old_keys.get(key) == new_keys.get(key):
            continue
        changed.append(f"{key}: {old_keys.get(key)!r} -> {new_keys.get(key)!r}")
    return changed


def record_config(run_dir: Path, dumped: str, evolver: Any) -> None:
    """Save the run's config once (``config.yaml``). A run that started (its state file exists) and is
    resumed with a different config is refused with the differing keys, unless
    ``evolver.accept_config_change``: then the changes are appended to ``config_changes.log``."""

    path = run_dir / "config.yaml"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists() and (run_dir / STATE_FILE).exists() and evolver.resume:
            if not evolver.accept_config_change:
                raise UserInputError(
                    f"{run_dir} holds a run ({STATE_FILE}) but its config.yaml is missing, so this command cannot "
                    "be checked against the run's config; restore config.yaml, or set evolver.accept_config_change "
                    "true to resume under this command's config (it becomes the run's config.yaml)")
            log.warning("%s had no config.yaml: resuming under this command's config, now recorded as it", run_dir)
        if path.exists() and (run_dir / STATE_FILE).exists():
            if not evolver.resume:  # the Evolver refuses to touch this run: its record stays as it is
                return
            changes = config_changes(path.read_text(), dumped)
            if changes and not evolver.accept_config_change:
                raise UserInputError(
                    f"{run_dir} holds a run started with another config ({path}); differing keys:\n  "
                    + "\n  ".join(changes) + "\nrerun with the same config, choose another evolver.run_dir, "
                    "or set evolver.accept_config_change true to continue with these changes (recorded)")
            if changes:
                stamp = datetime.datetime.now().isoformat(timespec="seconds")
                with (run_dir / "config_changes.log").open("a") as f:
                    f.write(f"# {stamp}: resumed with\n" + "".join(f"{c}\n" for c in changes))
                log.warning("resuming %s with %d config change(s), recorded in config_changes.log", run_dir,
                            len(changes))
            return
        tmp = path.with_name("config.yaml.tmp")
        tmp.write_text(dumped)
        tmp.replace(path)
    except OSError as err:
        with suppress(OSError):
            path.with_name("config.yaml.tmp").unlink(missing_ok=True)
        raise UserInputError(f"evolver.run_dir {run_dir}: cannot write the run's files there "
                             f"({err.strerror or err})") from None


def check_config_files(args: list[str]) -> None:
    """Read every ``--config`` file of ``args`` first, so that a missing file, bad YAML, an empty
    file or one that is not a mapping is reported naming the file (`UserInputError`)."""

    paths = [b for a, b in zip(args, args[1:], strict=False) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise UserInputError(f"--config {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            what = getattr(err, "problem", None) or str(err)
            raise UserInputError(f"--config {path}: invalid YAML{where}: {what}") from None
        if tree is None:
            raise UserInputError(f"--config {path}: the file is empty; expected a mapping of groups "
                                 "(policy:, data:, rollout:, ...)")
        if not isinstance(tree, dict):
            raise UserInputError(f"--config {path}: expected a mapping of groups (policy:, data:, rollout:, ...), "
                                 f"got a {type(tree).__name__}")
