"""The provider layer: the client, adapters per wire protocol, retry policy, response cache and
structured output. Roles import what they need from its modules (``mcu_sim.agents.llm.client``).
"""
