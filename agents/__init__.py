"""LLM roles (one module per role) and the provider layer (``llm``)."""
