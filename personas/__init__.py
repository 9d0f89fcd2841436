"""The simulated person: episode schema, samplers and lexicons."""
