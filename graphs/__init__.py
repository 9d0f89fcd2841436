"""LangGraph wiring: state, the episode graph, the aligner subgraph, the batch runner."""
