"""What a comparison runs: the recipe, its held-out validation rows, each method's rate grid, and
each run as one command (on this machine, under a launcher, or as a SLURM array task).

``scripts/compare.py`` decides the phases and draws the tables; this module knows how one run is
made, run and read back, so that a run started here and the same run started by a SLURM array
task (``python scripts/compare.py --task RUN_DIR``) write the same ``result.json``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = "recipes/tiny/sft_full.yaml"
RATIOS = (0.2, 0.5, 0.8)

# Method name -> overrides of the recipe. gps and grft get their budgets from the model at hand
# (fixed_mask_budgets); gspf's keep ratio is a share of the model already.
METHODS: dict[str, tuple[str, ...]] = {
    "full": ("--mask_strategy", "full"),
    **{f"gmt-grad-{r}": ("--mask_strategy", "gmt", "--mask_ratio", str(r), "--gmt_mode", "grad") for r in RATIOS},
    # update mode (mask on the optimizer's update) at the middle ratio: does it differ from grad mode?
    "gmt-update-0.5": ("--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "update"),
    **{f"random-{r}": ("--mask_strategy", "random", "--mask_ratio", str(r)) for r in RATIOS},
    "gps": ("--mask_strategy", "gps"),
    "grft": ("--mask_strategy", "grft"),
    "gspf": ("--mask_strategy", "gspf", "--gspf_keep_ratio", "0.05", "--gspf_warmup_steps", "25"),
    # gspf whose dense warm-up runs at full fine-tuning's best rate (dense_phase_learning_rate), the
    # swept rate being that of its sparse phase only
    "gspf-dense-lr": ("--mask_strategy", "gspf", "--gspf_keep_ratio", "0.05", "--gspf_warmup_steps", "25"),
    # gmt at one ratio with the other two scopes (the default is global: one top-k over everything).
    **{f"gmt-grad-0.5-{scope}": ("--mask_strategy", "gmt", "--mask_ratio", "0.5", "--gmt_mode", "grad",
                                 "--mask_scope", scope) for scope in ("tensor", "layer")},  # fmt: skip
    # LoRA on every linear layer.
    "lora": ("--mask_strategy", "full", "--use_peft", "true", "--lora_r", "8", "--lora_alpha", "16",
             "--lora_target_modules", "all-linear"),  # fmt: skip
}
FIXED_MASK = ("gps", "grft", "gspf", "gspf-dense-lr")  # the methods that train a fixed subset of entries
# gps keeps gps_k input connections of every output neuron, grft grft_k rows of every matrix: an
# eighth of the hidden size each (16 in the tiny model, hidden 128, as its comparison ran), so that
# they train about the same share of every model. The papers' budgets (gps K of 1-20, gspf 0.3%)
# are for 100M+ parameters and far sparser; --method 'gps=--gps_k 4' sets one.
FIXED_MASK_SHARE_OF_HIDDEN = 1 / 8
# gspf's dense warm-up, at most this share of a run (the tiny comparison's 25 steps in 300-step
# sweeps is 1/12); a shorter run gets a shorter warm-up, said by --plan.
GSPF_WARMUP_MAX_SHARE = 1 / 4
DENSE_PHASE_AT_FULLS_RATE = ("gspf-dense-lr",)  # their dense phase at full's best validation rate
# Each method's usual learning rate as a multiple of full fine-tuning's: what won its sweep on the
# tiny word problems (docs/compare/sweep.json), the centre of its grid on another recipe.
USUAL_MULTIPLES_FROM = REPO / "docs" / "compare" / "sweep.json"
SWEEP_SHARE = 1 / 3  # a sweep run's length, as a share of the recipe's (--sweep_steps)


@dataclass(frozen=True)
class Recipe:
    """A training recipe as the comparison reads it."""

    path: Path
    settings: dict

    @property
    def script(self) -> str:
        from gmt.config import recipe_script

        return recipe_script(self.settings)

    def setting(self, name: str):
        """A training setting: the recipe's, else its config's default (SFTConfig's or DPOConfig's)."""
        from gmt.config import GMTDPOConfig, GMTSFTConfig

        config = GMTDPOConfig if self.script == "gmt/dpo.py" else GMTSFTConfig
        return self.settings.get(name, config.__dataclass_fields__[name].default)

    @property
    def learning_rate(self) -> float:
        return float(self.setting("learning_rate"))

    def steps(self, train_rows: int, world_size: int) -> int:
        """The recipe's optimizer steps on ``train_rows`` rows and ``world_size`` processes, counted
        as the Trainer counts them (``max_steps`` where the recipe sets one)."""
        if int(self.setting("max_steps")) > 0:
            return int(self.setting("max_steps"))
        batches = math.ceil(math.ceil(train_rows / world_size) / int(self.setting("per_device_train_batch_size")))
        per_epoch = max(1, math.ceil(batches / int(self.setting("gradient_accumulation_steps"))))
        return math.ceil(float(self.setting("num_train_epochs")) * per_epoch)


def read_recipe(path: str | Path) -> Recipe:
    """The recipe at ``path`` (relative paths: from the repository root)."""
    path = Path(path)
    if not (REPO / path).is_file() and not path.is_file():
        sys.exit(f"--config {path}: no such recipe file")
    return Recipe(path, yaml.safe_load((path if path.is_file() else REPO / path).read_text()))


def sweep_steps_for(total_steps: int) -> int:
    """A sweep run's default length: a third of the recipe's, to 2 significant figures."""
    steps = total_steps * SWEEP_SHARE
    return max(1, int(float(f"{steps:.2g}")))


def hold_out(recipe: Recipe, out: Path, validation_rows: int, validation_data: str | None, seed: int = 0) -> Path:
    """``out`` with ``train.jsonl`` and ``validation.jsonl`` in the recipe's raw layout (its column
    map and prompt format still apply): ``validation_rows`` rows of the recipe's training split (a
    fixed random choice) held out of it, or, with ``validation_data``, that data set's train split as
    the validation rows and the whole training split to train on. A ``test.jsonl`` beside the
    training data (the tiny task's) is copied. Written once; a later call reads it back."""
    if (out / "validation.jsonl").is_file():
        return out
    source = recipe.settings.get("dataset_name")
    local = Path(source) if source else None
    out.mkdir(parents=True, exist_ok=True)
    if validation_data is None and local is not None and (local / "train.jsonl").is_file():
        # the raw lines, as they are (the tiny comparison's held-out rows, unchanged)
        rows = (local / "train.jsonl").read_text().splitlines()
        held_out = _held_out(len(rows), validation_rows, seed)
        (out / "train.jsonl").write_text("".join(row + "\n" for i, row in enumerate(rows) if i not in held_out))
        (out / "validation.jsonl").write_text("".join(rows[i] + "\n" for i in sorted(held_out)))
    else:
        train = _training_split(recipe)
        if validation_data is None:
            held_out = _held_out(len(train), validation_rows, seed)
            validation = train.select(sorted(held_out))
            train = train.select([i for i in range(len(train)) if i not in held_out])
        else:
            from gmt.data import load_training_dataset

            validation = load_training_dataset(validation_data)["train"]
        _write_rows(train, out / "train.jsonl")
        _write_rows(validation, out / "validation.jsonl")
    if local is not None and (local / "test.jsonl").is_file():
        shutil.copy(local / "test.jsonl", out / "test.jsonl")
    return out


def _held_out(rows: int, validation_rows: int, seed: int) -> set[int]:
    if not 0 < validation_rows < rows:
        sys.exit(f"--validation_rows must be between 1 and {rows - 1} (the training rows), got {validation_rows}")
    return set(random.Random(seed).sample(range(rows), validation_rows))


def _training_split(recipe: Recipe):
    """The recipe's raw training split: ``dataset_name`` (hub, folder or file) or its ``datasets:`` mixture."""
    settings = recipe.settings
    split = settings.get("dataset_train_split", "train")
    if settings.get("datasets"):
        from trl import get_dataset
        from trl.scripts.utils import DatasetConfig, DatasetMixtureConfig

        mixture = DatasetMixtureConfig(datasets=[DatasetConfig(**source) for source in settings["datasets"]])
        return get_dataset(mixture)[split]
    from gmt.data import load_training_dataset

    return load_training_dataset(settings["dataset_name"], settings.get("dataset_config"))[split]


def _write_rows(rows, path: Path) -> None:
    with path.open("w") as file:
        for row in rows:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")


def comparison_recipe(recipe: Recipe, data: Path, model: str | None, out: Path) -> Path:
    """The recipe every run of the comparison starts from (``out/recipe.yaml``): the user's, training
    on the held-out copy of its data (and on ``model`` where given)."""
    settings = {key: value for key, value in recipe.settings.items()
                if key not in ("datasets", "dataset_config", "dataset_train_split", "dataset_test_split")}  # fmt: skip
    settings["dataset_name"] = str(data.resolve())
    if model is not None:
        settings["model_name_or_path"] = str(model)
    path = out / "recipe.yaml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {recipe.path}, as scripts/compare.py runs it: its data with the validation rows held out\n"
                    + yaml.safe_dump(settings, sort_keys=False))  # fmt: skip
    return path


def fixed_mask_budgets(model: str) -> dict[str, tuple[str, ...]]:
    """gps's and grft's budgets for ``model`` (a folder or a hub id: its config only), an eighth of
    its hidden size (FIXED_MASK_SHARE_OF_HIDDEN)."""
    from transformers import AutoConfig

    try:
        hidden = AutoConfig.from_pretrained(model).hidden_size
    except (OSError, ValueError, AttributeError) as error:
        sys.exit(f"the fixed-mask budgets (gps_k, grft_k) come from the model's hidden size, and {model}'s config "
                 f"cannot be read ({type(error).__name__}: {error}); set them with --method 'gps=--gps_k K' "
                 "--method 'grft=--grft_k K'")  # fmt: skip
    budget = str(max(1, round(hidden * FIXED_MASK_SHARE_OF_HIDDEN)))
    return {"gps": ("--gps_k", budget), "grft": ("--grft_k", budget)}


def gspf_warmup(overrides: tuple[str, ...], steps: int | None) -> tuple[str, ...]:
    """``overrides`` with gspf's warm-up shortened to at most GSPF_WARMUP_MAX_SHARE of a run of
    ``steps`` (gmt-sft refuses a warm-up as long as the run)."""
    if not steps or "--gspf_warmup_steps" not in overrides:
        return overrides
    at = overrides.index("--gspf_warmup_steps") + 1
    longest = max(1, int(steps * GSPF_WARMUP_MAX_SHARE))
    if int(overrides[at]) <= longest:
        return overrides
    return (*overrides[:at], str(longest), *overrides[at + 1 :])


def usual_multiples(sweep_file: Path = USUAL_MULTIPLES_FROM) -> dict[str, float]:
    """Each method's winning rate over full fine-tuning's in a finished sweep (``sweep.json``)."""
    if not sweep_file.is_file():
        return {}
    sweeps = json.loads(sweep_file.read_text())["sweeps"]
    if "full" not in sweeps:
        return {}
    full = best_rate(sweeps["full"])
    return {method: best_rate(records) / full for method, records in sweeps.items()}


def ladder(place: int) -> float:
    """The ``place``-th step of the ladder ..., 0.3, 1, 3, 10, 30, ... (place 0 is 1, 1 is 3, 2 is 10)."""
    return normal_rate((1 if place % 2 == 0 else 3) * 10.0 ** (place // 2))


def ladder_place(value: float) -> int:
    """The ladder step ``value`` is nearest to (half-decades in log scale)."""
    return round(2 * math.log10(value))


def normal_rate(rate: float) -> float:
    """``rate`` to 6 significant figures (as its run's folder is named), so that the same rate
    reached two ways compares equal."""
    return float(f"{rate:.6g}")


def best_rate(records: list[dict]) -> float | None:
    """The rate with the best validation score (ties: the lower rate); None when every run failed."""
    scored = [record for record in records if not failed(record)]
    if not scored:
        return None
    return min(scored, key=lambda record: (-record["score"], record["learning_rate"]))["learning_rate"]


def failed(record: dict) -> bool:
    """Whether ``record`` is of a run that failed (``failed.json``; it is tried again next time)."""
    return "failed" in record


@dataclass
class Run:
    """One (method, learning rate, seed) of a comparison: how to train it, how to score it, where it
    writes. Saved as ``run.json`` in its folder; ``result.json`` is written when it has finished."""

    phase: str  # "sweep" or "final"
    method: str
    seed: int
    learning_rate: float
    max_steps: int | None
    run_dir: str
    train: list[str]  # the command, run from the repository root
    env: dict[str, str] = field(default_factory=dict)
    model: str = ""  # the base, for the entries changed
    suite: str | None = None  # scored after training by gmt/sft.py's eval_suite; None: by eval_loss
    scored_on: str = ""
    curve: bool = False  # score each saved checkpoint (final runs' learning curve)
    curve_eval_args: str = ""
    forgetting: dict | None = None  # {"suite": ..., "eval_args": ...} scored on the final model

    def save(self) -> None:
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.run_dir) / "run.json").write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, run_dir: str | Path) -> Run:
        return cls(**json.loads((Path(run_dir) / "run.json").read_text()))


def training_command(launcher: str, script: str, recipe: Path, arguments: list[str]) -> tuple[list[str], dict]:
    """The command line that trains one run, and the environment it adds: ``python`` (one process
    here), an ``accelerate launch ...`` or ``torchrun ...`` line, or ``scripts/launch.slurm [CONFIG]``
    (one accelerate launch per node of a SLURM allocation)."""
    words = shlex.split(launcher)
    if any(word.endswith("launch.slurm") for word in words):
        start = next(i for i, word in enumerate(words) if word.endswith("launch.slurm"))
        slurm, accelerate_config = words[: start + 1], words[start + 1 :]
        command = ([] if slurm[0] == "bash" else ["bash"]) + slurm + [str(recipe), *accelerate_config, *arguments]
        return command, {"GMT_SCRIPT": script}
    if words in ([], ["python"]):
        return [sys.executable, script, "--config", str(recipe), *arguments], {}
    if words[0] in ("accelerate", "torchrun"):  # the launcher's module, under this interpreter
        module = "accelerate.commands.launch" if words[:2] == ["accelerate", "launch"] else "torch.distributed.run"
        rest = words[2:] if words[0] == "accelerate" else words[1:]
        return [sys.executable, "-m", module, *rest, script, "--config", str(recipe), *arguments], {}
    return [*words, script, "--config", str(recipe), *arguments], {}


def execute(run: Run, threads: int | None = None) -> dict:
    """Train ``run``, score it, write and return its ``result.json`` record."""
    started = time.perf_counter()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **run.env}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run(run.train, cwd=REPO, capture_output=True, text=True, env=env)
    failure = None
    if result.returncode != 0:
        failure = f"exit status {result.returncode}:\n{result.stderr[-3000:]}"
    else:
        try:
            record = finish(run, env)
        except (RuntimeError, OSError, KeyError, ValueError) as error:  # a scoring that failed
            failure = f"{type(error).__name__}: {error}"
    if failure is not None:  # recorded, reported in the tables, and tried again by the next invocation
        record = {"method": run.method, "seed": run.seed, "learning_rate": run.learning_rate,
                  "max_steps": run.max_steps, "failed": failure, "seconds": time.perf_counter() - started}  # fmt: skip
        (Path(run.run_dir) / "failed.json").write_text(json.dumps(record, indent=2))
        print(f"{run.method} seed {run.seed} lr {run.learning_rate:g} failed ({run.run_dir}/failed.json):\n"
              f"{failure[-1500:]}", file=sys.stderr, flush=True)  # fmt: skip
        return record
    (Path(run.run_dir) / "failed.json").unlink(missing_ok=True)
    record["seconds"] = time.perf_counter() - started
    (Path(run.run_dir) / "result.json").write_text(json.dumps(record, indent=2))
    return record


def finish(run: Run, env: dict[str, str]) -> dict:
    """The record of a trained run, from what it wrote: its score, kept fraction, entries changed
    and optimizer state; a final run's learning curve and forgetting score."""
    run_dir = Path(run.run_dir)
    trainer_state = json.loads((run_dir / "trainer_state.json").read_text())
    history = trainer_state["log_history"]
    if run.suite is not None:
        score = json.loads((run_dir / "eval" / f"lm_eval_{run.suite}.json").read_text())["gmt"]["score"]
    else:  # the loss on the validation rows at the last step: lower is better, so its negative
        losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
        if not losses:
            raise RuntimeError(f"{run_dir}: no eval_loss was logged")
        score = -losses[-1]
    kept = [entry["mask/kept_fraction"] for entry in history if "mask/kept_fraction" in entry]
    record = {
        "method": run.method,
        "seed": run.seed,
        "learning_rate": run.learning_rate,
        "max_steps": run.max_steps,
        "scored_on": run.scored_on,
        "metric": run.suite or "eval_loss",
        "score": score,
        "kept_fraction": statistics.fmean(kept) if kept else None,  # None: no logging step ran
        "updated_fraction": updated_fraction(run.model, run_dir, history),
        "command": run.train,
    }
    logged_state = [entry["gmt/optimizer_state_bytes_per_rank"] for entry in history
                    if "gmt/optimizer_state_bytes_per_rank" in entry]  # fmt: skip
    if logged_state:
        record["optimizer_state_bytes"] = logged_state[-1]
    if run.phase == "final":
        checkpoints = sorted(run_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
        jobs = []
        if run.forgetting:
            jobs.append((run_dir, run.forgetting["suite"], run.forgetting["eval_args"], run_dir / "eval"))
        if run.curve:  # every checkpoint but the last (the final model is scored already)
            jobs += [(path, run.suite, run.curve_eval_args, path / "eval") for path in checkpoints[:-1]]
        scores = score_checkpoints(jobs, env) if jobs else []
        if run.forgetting:
            record["equations_score"] = scores.pop(0)
        record["curve"] = [{"step": int(path.name.split("-")[1]), "score": value}
                           for path, value in zip(checkpoints[:-1], scores)] if run.curve else []  # fmt: skip
        record["curve"].append({"step": trainer_state["global_step"], "score": score})
        for path in checkpoints:  # scored: the final model stays in run_dir
            shutil.rmtree(path)
    return record


def updated_fraction(base: str, tuned: Path, history: list[dict]) -> float:
    """Fraction of the base model's entries whose final value differs from the base: as the run
    logged it (``gmt/entries_changed_fraction``), or, for a LoRA adapter, with it merged in."""
    logged = [entry["gmt/entries_changed_fraction"] for entry in history if "gmt/entries_changed_fraction" in entry]
    if logged:
        return logged[-1]
    from transformers import AutoModelForCausalLM

    from gmt.adapter import is_adapter, merged_model
    from gmt.delta import changed_entries

    before = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    model = merged_model(tuned, str(base)) if is_adapter(tuned) else AutoModelForCausalLM.from_pretrained(tuned)
    after = dict(model.named_parameters())
    changed = sum(int(changed_entries(before[name].detach().to(after[name].dtype), after[name].detach()).sum())
                  for name in before)  # fmt: skip
    return changed / sum(p.numel() for p in before.values())


def score_checkpoints(jobs: list[tuple[Path, str, str, Path]], env: dict[str, str]) -> list[float]:
    """The score of each (model, suite, eval_args, output_dir), in one process (the harness's task
    index is built once)."""
    spec = [{"model": str(model), "suite": suite, "eval_args": eval_args, "output_dir": str(out)}
            for model, suite, eval_args, out in jobs]  # fmt: skip
    command = [sys.executable, str(REPO / "scripts" / "compare.py"), "--score_jobs", json.dumps(spec)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"scoring {[job[0] for job in jobs]} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def score_jobs(spec: str) -> None:
    """``--score_jobs``: score each job of the JSON list; print the scores as one JSON line."""
    from gmt.evaluation.harness import evaluate, parse

    scores = []
    for job in json.loads(spec):
        argv = ["--suite", job["suite"], "--model", job["model"], "--output_dir", job["output_dir"],
                *shlex.split(job["eval_args"])]  # fmt: skip
        scores.append(evaluate(parse(argv))["score"])
    print(json.dumps(scores))


def cached(run: Run, threads: int | None = None) -> dict:
    """``run``'s record: read back if it finished before, else run it now. A finished run made with
    another command (another recipe, length, method setting or launcher) is refused: a resumed
    comparison never mixes settings."""
    done = Path(run.run_dir) / "result.json"
    if not done.is_file():
        run.save()
        return execute(run, threads)
    record = json.loads(done.read_text())
    if record["max_steps"] != run.max_steps:
        def length(steps: int | None) -> str:
            return f"{steps} steps" if steps else "the recipe's length"

        sys.exit(f"{done} ran {length(record['max_steps'])}, this comparison asks {length(run.max_steps)} "
                 "(--sweep_steps / --max_steps): remove those runs or use another --out")
    if "command" in record and _settings(record["command"]) != _settings(run.train):
        sys.exit(f"{done} was trained with other settings:\n  {shlex.join(record['command'])}\nthis comparison "
                 f"asks\n  {shlex.join(run.train)}\nremove those runs or use another --out")
    return record


def _settings(command: list[str]) -> list[str]:
    """What makes a run: its training command without the interpreter's path (the same run from another
    venv) and without ``--overwrite_output_dir true``, which says how to treat the folder, not how to train."""
    words = [word for word in command if word != sys.executable and not word.endswith("/python")]
    for start in range(len(words) - 1):
        if words[start:start + 2] == ["--overwrite_output_dir", "true"]:
            return words[:start] + words[start + 2:]
    return words
