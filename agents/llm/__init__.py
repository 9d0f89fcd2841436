"""The provider layer: the client, adapters per wire protocol, retry policy, response cache and
structured output. Its vocabulary (errors, usage, requests and replies) is in ``types``; roles
import what they need from the modules (``mcu_sim.agents.llm.client``).
"""
