"""The stepwise strategy (``llm.strategy: stepwise``) for small local models: each role asks
for one short piece of plain text at a time and code assembles the role's output model."""
