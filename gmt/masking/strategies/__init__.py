"""The strategies, one module each; ``gmt.masking.registry`` lists them by ``mask_strategy`` name."""
