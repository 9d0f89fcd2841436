"""Non-LLM executors. Heavy imports happen in each tool's ``load()``, never at import time."""
