"""One run of a comparison: how it is made into a command (here, under a launcher, or as a SLURM array
task), run, scored and read back, so that a run started here and the same run started by an array task
(``gmt compare --task RUN_DIR``) write the same ``result.json``."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gmt.config import SCRIPTS
from gmt.resources import PACKAGE


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
    (one accelerate launch per node of a SLURM allocation). ``script`` is one of ``gmt.config.SCRIPTS``:
    run as its module (``-m gmt.sft``), so that an installed package needs no clone; another launcher
    gets the package's file."""
    words = shlex.split(launcher)
    module = SCRIPTS[script].module
    if any(word.endswith("launch.slurm") for word in words):
        start = next(i for i, word in enumerate(words) if word.endswith("launch.slurm"))
        slurm, accelerate_config = words[: start + 1], words[start + 1 :]
        command = ([] if slurm[0] == "bash" else ["bash"]) + slurm + [str(recipe), *accelerate_config, *arguments]
        return command, {"GMT_SCRIPT": script}
    if words in ([], ["python"]):
        return [sys.executable, "-m", module, "--config", str(recipe), *arguments], {}
    if words[0] in ("accelerate", "torchrun"):  # the launcher's module, under this interpreter
        launcher_module = "accelerate.commands.launch" if words[:2] == ["accelerate", "launch"] else (
            "torch.distributed.run")  # fmt: skip
        rest = words[2:] if words[0] == "accelerate" else words[1:]
        return [sys.executable, "-m", launcher_module, *rest, "-m", module, "--config", str(recipe), *arguments], {}
    return [*words, str(PACKAGE.parent / script), "--config", str(recipe), *arguments], {}


def execute(run: Run, threads: int | None = None) -> dict:
    """Train ``run``, score it, write and return its ``result.json`` record."""
    started = time.perf_counter()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **run.env}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run(run.train, capture_output=True, text=True, env=env)
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
    record |= step_delta_and_rewards(history)
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


def step_delta_and_rewards(history: list[dict]) -> dict:
    """What a run logged beyond its score: its step deltas' mean changed fraction and bytes against
    the dense weights (``step_delta_every``), and GRPO's mean reward at each logging step."""
    found: dict = {}
    deltas = [entry for entry in history if "delta/bytes_vs_dense" in entry]
    if deltas:
        found["step_delta"] = {key: statistics.fmean(entry[f"delta/{key}"] for entry in deltas)
                               for key in ("changed_fraction", "bytes_vs_dense")}  # fmt: skip
    rewards = [{"step": entry["step"], "reward": entry["reward"]} for entry in history if "reward" in entry]
    if rewards:
        found["rewards"] = rewards
    return found


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
    command = [sys.executable, "-m", "gmt.compare", "--score_jobs", json.dumps(spec)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
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
    venv), with the script named one way (``gmt/sft.py``, ``/site-packages/gmt/sft.py`` and ``-m gmt.sft``
    are one script), and without ``--overwrite_output_dir true``, which says how to treat the folder,
    not how to train."""
    words = [word for word in command if word != sys.executable and not word.endswith("/python")]
    settings, index = [], 0
    while index < len(words):
        pair = words[index : index + 2]
        if pair == ["--overwrite_output_dir", "true"]:
            index += 2
            continue
        if pair[0] == "-m" and len(pair) == 2 and pair[1].startswith("gmt."):
            settings.append(pair[1].replace(".", "/") + ".py")
            index += 2
            continue
        script = words[index].endswith(tuple(SCRIPTS))
        settings.append("/".join(Path(words[index]).parts[-2:]) if script else words[index])
        index += 1
    return settings
