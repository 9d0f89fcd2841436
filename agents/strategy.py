"""The strategy selector: each role function as the nodes call it, answered by the
one-call structured role (``agents/<role>.py``) or the stepwise one (``agents/stepwise``)
as ``call.strategy`` says. Both return the same values."""

from __future__ import annotations

from typing import Any

from mcu_sim.agents import commonsense, device, dialogue, events, narrative, persona
from mcu_sim.agents.base import RoleCall
from mcu_sim.agents.stepwise import device as stepwise_device
from mcu_sim.agents.stepwise import dialogue as stepwise_dialogue
from mcu_sim.agents.stepwise import events as stepwise_events
from mcu_sim.agents.stepwise import person as stepwise_person
from mcu_sim.agents.stepwise import persona as stepwise_persona


def _stepwise(call: RoleCall) -> bool:
    return call.strategy == "stepwise"


async def generate_persona(call: RoleCall, *args: Any) -> Any:
    module = stepwise_persona if _stepwise(call) else persona
    return await module.generate_persona(call, *args)


async def generate_commonsense(call: RoleCall, *args: Any) -> Any:
    module = stepwise_person if _stepwise(call) else commonsense
    return await module.generate_commonsense(call, *args)


async def generate_narrative(call: RoleCall, *args: Any) -> Any:
    module = stepwise_person if _stepwise(call) else narrative
    return await module.generate_narrative(call, *args)


async def generate_events(call: RoleCall, *args: Any) -> Any:
    module = stepwise_events if _stepwise(call) else events
    return await module.generate_events(call, *args)


async def generate_device_images(call: RoleCall, *args: Any) -> Any:
    module = stepwise_device if _stepwise(call) else device
    return await module.generate_device_images(call, *args)


async def generate_session(call: RoleCall, **kwargs: Any) -> Any:
    module = stepwise_dialogue if _stepwise(call) else dialogue
    return await module.generate_session(call, **kwargs)
