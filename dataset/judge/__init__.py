"""``mcu judge``: an LLM judge on STARK's human-evaluation rubric (ratings of sampled
episodes, and the head-to-head comparison of two runs), written to ``RUN_DIR/judge/``."""
