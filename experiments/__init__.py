"""experiments: generated tasks, models, the training harness and reproduction scripts."""
