"""SmolLM2-135M-Instruct, the real model that installs offline, and reasoning-gym tasks as its data."""

from gmt.smollm2.build import ensure_smollm2_assets

__all__ = ["ensure_smollm2_assets"]
