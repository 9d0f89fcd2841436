"""Image aligner (STARK §3.8): plan → execute → QA for every image request.

Until image tools are configured, requests stay ``pending``; this node records why.
"""

from __future__ import annotations

from typing import Any

from mcu_sim.graphs.state import EpisodeState, node_reads


@node_reads("image_requests")
async def align_node(state: EpisodeState, runtime: Any) -> dict[str, Any]:
    """reads: image_requests / writes: image_requests (status, image, reason)."""
    ctx = runtime.context
    ctx.executions["align"] += 1
    tools = ctx.tools
    if tools is None:
        return {"notes": ["image aligner skipped: no image tools configured"]}
    return await tools.align_all(state, ctx)
