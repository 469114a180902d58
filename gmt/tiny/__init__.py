"""The built-in tiny recipe's assets: generated data, tokenizer and a CPU-pretrained base."""

from gmt.tiny.build import DEFAULT_DIR, TinySettings, ensure_tiny_assets

__all__ = ["DEFAULT_DIR", "TinySettings", "ensure_tiny_assets"]
