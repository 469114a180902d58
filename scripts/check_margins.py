"""Rerun the training behind every outcome assertion of the tests and print each one's margin.

A test that asserts a score, a loss level or a count after training passes only where the run it
checks lands on the passing side; another CPU, thread count or seed gives another trajectory. This
script reruns each such run (``tests/outcomes.py``: the same functions the tests call) over seeds 0-4
and 1 and 2 torch threads (an outcome trained by launched single-thread ranks at one thread count),
every run in a fresh process with its own assets, and reports, for each assertion, the spread it
measured and how far the limit sits outside it:

    python scripts/check_margins.py                        # every outcome: about 75 min on 2 cores,
                                                           # 50 of them the tiny main job
    python scripts/check_margins.py --outcomes main_job --resume   # only what an earlier call did not finish
    python scripts/check_margins.py --outcomes dpo_margin  # one of them
    python scripts/check_margins.py --seeds 0 1 --threads 1

It writes ``--out`` (default docs/margins): margins.json with every run's values, and margins.md,
the table; the runs of outcomes that ``--outcomes`` leaves out are kept from an earlier
margins.json. An assertion is *safe* when every run passes it and its limit lies at least
``SAFE_STANDARD_DEVIATIONS`` standard deviations of the measured spread from the mean. Run it after
changing a recipe, the tiny build or a test's training settings; it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "scripts"))

SAFE_STANDARD_DEVIATIONS = 3.0


def run_one(name: str, seed: int, threads: int, workdir: Path) -> dict[str, float]:
    """Build the outcome's assets for ``seed`` and run its measurement, in this process, on
    ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    from outcomes import OUTCOMES

    from gmt.tiny import ensure_tiny_assets

    outcome = OUTCOMES[name]
    assets = ensure_tiny_assets(workdir / "assets", replace(outcome.assets, seed=seed))
    return outcome.measure(assets, workdir / "run", seed)


def launch(name: str, seed: int, threads: int, scratch: Path) -> dict:
    """``run_one`` in a fresh process (its own thread count, nothing cached from another run)."""
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-s{seed}-t{threads}-", dir=scratch))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    command = [sys.executable, __file__, "--one", name, str(seed), str(threads), str(workdir)]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    record = {"outcome": name, "seed": seed, "threads": threads, "seconds": round(time.perf_counter() - started, 1)}
    if result.returncode != 0:
        record["error"] = result.stderr[-2000:]
    else:
        record["values"] = json.loads(result.stdout.strip().splitlines()[-1])
    return record


def summarize(records: list[dict]) -> list[dict]:
    """One row per assertion: its limit, the measured spread, the worst margin and the verdict."""
    from outcomes import OUTCOMES

    rows = []
    for name, outcome in OUTCOMES.items():
        runs = [r for r in records if r["outcome"] == name]
        if not runs:
            continue
        failed = [r for r in runs if "values" not in r]
        measured = [r["values"] for r in runs if "values" in r]
        for key in outcome.reported:  # shown for reference, asserted nowhere
            values = [entry[key] for entry in measured]
            rows.append({"outcome": name, "test": outcome.test, "assertion": f"{key} (no assertion)",
                         "runs": len(runs), "crashed": len(failed), "safe": None,
                         **({"min": min(values), "mean": sum(values) / len(values), "max": max(values)}
                            if values else {})})  # fmt: skip
        for bound in outcome.bounds:
            values = [entry[bound.key] for entry in measured]
            row = {"outcome": name, "test": outcome.test, "assertion": bound.describe(), "runs": len(runs),
                   "crashed": len(failed)}  # fmt: skip
            if values:
                average = sum(values) / len(values)
                spread = math.sqrt(sum((v - average) ** 2 for v in values) / max(1, len(values) - 1))
                worst = min(bound.margin(v) for v in values)
                distance = bound.margin(average) / spread if spread > 0 else math.inf
                row.update(min=min(values), mean=average, max=max(values), std=spread, worst_margin=worst,
                           standard_deviations=distance)  # fmt: skip
                # one run has no spread to judge by
                row["safe"] = len(values) > 1 and not failed and worst > 0 and distance >= SAFE_STANDARD_DEVIATIONS
            else:
                row["safe"] = False
            rows.append(row)
    return rows


def markdown(rows: list[dict], seeds: list[int], threads: list[int], machine: str) -> str:
    """The margins table."""
    lines = [
        f"Outcome assertions of the tests over seeds {', '.join(map(str, seeds))} and "
        f"{' and '.join(map(str, threads))} torch threads, one fresh process per run, on {machine}.",
        f"Safe: every run passes and the limit is at least {SAFE_STANDARD_DEVIATIONS:g} standard deviations "
        "of the measured spread from the mean.",
        "",
        "| test | assertion | runs | min | mean | max | std | worst margin | mean's margin / std | safe |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        if row["safe"] is None and "mean" in row:
            lines.append(f"| {row['test']} | {row['assertion']} | {row['runs']} | {row['min']:.4g} | "
                         f"{row['mean']:.4g} | {row['max']:.4g} | | | | |")  # fmt: skip
            continue
        if "mean" not in row:
            lines.append(f"| {row['test']} | `{row['assertion']}` | {row['runs']} | – | – | – | – | – | – | no |")
            continue
        distance = "∞" if math.isinf(row["standard_deviations"]) else f"{row['standard_deviations']:.1f}"
        lines.append(
            f"| {row['test']} | `{row['assertion']}` | {row['runs']} | {row['min']:.4g} | {row['mean']:.4g} | "
            f"{row['max']:.4g} | {row['std']:.2g} | {row['worst_margin']:.4g} | {distance} | "
            f"{'yes' if row['safe'] else '**no**'} |"
        )
    lines += ["", "Reproduce: `python scripts/check_margins.py`"]
    return "\n".join(lines) + "\n"


def readme_main_job(records: list[dict], machine: str) -> None:
    """Put the tiny main job's measured score range (and time per run) into docs/tiny.md, between the
    main-job markers."""
    from readme_section import replace_readme_section

    runs = [r for r in records if r["outcome"] == "main_job" and "values" in r]
    if not runs:
        return
    scores = [r["values"]["score"] for r in runs]
    minutes = [r["seconds"] / 60 for r in runs]
    by_threads = {}
    for run in runs:
        by_threads.setdefault(run["threads"], []).append(run["seed"])
    measured = "; ".join(
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))} on {threads} torch "
        f"thread{'s' if threads > 1 else ''}"
        for threads, seeds in sorted(by_threads.items())
    )
    body = (
        f"On {machine}, over {len(runs)} runs ({measured}; the seed of the base's build and of training), it "
        f"printed scores from {min(scores):.3f} to {max(scores):.3f}, and a run (the base's build, then the "
        f"job) took {min(minutes):.1f} to {max(minutes):.1f} min "
        "(`python scripts/check_margins.py --outcomes main_job`; [margins/margins.md](margins/margins.md)).\n"
    )
    replace_readme_section("<!-- main-job:start -->", "<!-- main-job:end -->", body, REPO / "docs" / "tiny.md")


def main(argv: list[str] | None = None) -> int:
    from outcomes import OUTCOMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", nargs="+", choices=sorted(OUTCOMES), default=sorted(OUTCOMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads run side by side at most")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "margins")
    parser.add_argument("--resume", action="store_true", help="keep the finished runs of an earlier call")
    parser.add_argument("--one", nargs=4, metavar=("OUTCOME", "SEED", "THREADS", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # a worker process: print the values as the last line
        name, seed, threads, workdir = args.one
        print(json.dumps(run_one(name, int(seed), int(threads), Path(workdir))))
        return 0

    from machine import describe_machine

    machine = describe_machine("cpu").rsplit(",", 1)[0]  # the thread count varies by run
    saved = args.out / "margins.json"
    earlier = json.loads(saved.read_text())["runs"] if saved.exists() else []
    # What an earlier call measured of the outcomes not rerun now is kept; with --resume, so are
    # its finished runs of the outcomes named, which are then not run again.
    records = [r for r in earlier if r["outcome"] not in args.outcomes or (args.resume and "values" in r)]
    done = {(r["outcome"], r["seed"], r["threads"]) for r in records}
    jobs = [(name, seed, threads) for threads in args.threads for name in args.outcomes for seed in args.seeds
            if (not OUTCOMES[name].launched or threads == min(args.threads))
            and (name, seed, threads) not in done]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="check-margins-") as scratch:
        progress = tqdm(total=len(jobs), desc="outcome runs", unit="run")
        for threads in args.threads:  # runs of one thread count side by side, as many as the cores hold
            batch = [job for job in jobs if job[2] == threads]
            with ThreadPoolExecutor(max(1, args.cores // threads)) as pool:
                for future in as_completed([pool.submit(launch, *job, Path(scratch)) for job in batch]):
                    record = future.result()
                    records.append(record)
                    write_results(records, args.out, machine)  # each run kept as soon as it ends
                    progress.update()
                    if "error" in record:
                        tqdm.write(f"{record['outcome']} seed {record['seed']}: crashed\n{record['error']}")
        progress.close()
    rows, table = write_results(records, args.out, machine)
    print(table)
    readme_main_job(records, machine)
    return 0 if all(row["safe"] is not False for row in rows) else 1


def write_results(records: list[dict], out: Path, machine: str) -> tuple[list[dict], str]:
    """Write margins.json (every run and the rows) and margins.md (the table) into ``out``."""
    rows = summarize(records)
    table = markdown(rows, sorted({r["seed"] for r in records}), sorted({r["threads"] for r in records}), machine)
    out.mkdir(parents=True, exist_ok=True)
    (out / "margins.json").write_text(json.dumps({"machine": machine, "rows": rows, "runs": records}, indent=2) + "\n")
    (out / "margins.md").write_text(table)
    return rows, table


if __name__ == "__main__":
    raise SystemExit(main())
