"""Test and benchmark helpers that ship with the package: a real HTTP fake OpenAI endpoint
and scripted, schema-valid answers for every role (useful for dry runs too)."""
