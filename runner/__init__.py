"""Running many episodes: the batch runner, checkpointers, output files, manifest,
progress, cost estimate, the Ray backend."""
