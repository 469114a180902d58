"""What a run prints: the Trainer's log lines without the per-block kept fractions (about 45 keys
on a 32-layer model), which still go to every ``report_to`` backend and to the trainer state.
``log_mask_blocks: true`` prints them too."""

from __future__ import annotations

from transformers import PrinterCallback, ProgressCallback

BLOCK_PREFIX = "mask/kept_fraction/"


def without_block_fractions(logs: dict) -> dict:
    """``logs`` without the ``mask/kept_fraction/<block>`` keys (a copy: every callback gets the same dict)."""
    return {key: value for key, value in logs.items() if not key.startswith(BLOCK_PREFIX)}


class QuietProgressCallback(ProgressCallback):
    """transformers' progress bar, printing log lines without the per-block kept fractions."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return super().on_log(args, state, control, logs=without_block_fractions(logs or {}), **kwargs)


class QuietPrinterCallback(PrinterCallback):
    """transformers' printer (``disable_tqdm``), likewise."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        return super().on_log(args, state, control, logs=without_block_fractions(logs or {}), **kwargs)


def quiet_console(callback_handler) -> None:
    """Put the quiet printers in place of the Trainer's own console callbacks."""
    for loud, quiet in ((ProgressCallback, QuietProgressCallback), (PrinterCallback, QuietPrinterCallback)):
        if any(type(callback) is loud for callback in callback_handler.callbacks):
            callback_handler.remove_callback(loud)
            callback_handler.add_callback(quiet)
