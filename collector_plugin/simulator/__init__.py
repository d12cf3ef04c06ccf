"""A faithful fake of the ModelArts API for tests, the demo and benchmarks.

``Simulator`` serves the five log endpoints, job/service discovery, IAM password login and OBS
objects over real HTTP on 127.0.0.1, optionally behind APIG-like flow control (``FlowLimit``);
``Scenario`` holds the state tests change while it runs;
``FaultInjector`` (``sim.faults``) makes chosen requests fail.
"""

from __future__ import annotations

from collector_plugin.simulator.content import LogGenerator
from collector_plugin.simulator.demo import receiver_config, receiver_yaml
from collector_plugin.simulator.faults import FaultInjector, FaultRule
from collector_plugin.simulator.gateway import CallCount, FlowLimit
from collector_plugin.simulator.scenario import (
    Event,
    Scenario,
    Service,
    TaskLog,
    TrainingJob,
    Update,
    V1Job,
    edge_detail,
)
from collector_plugin.simulator.server import (
    ALL_QUIRKS,
    DEFAULT_AK,
    DEFAULT_QUIRKS,
    DEFAULT_SK,
    RequestLog,
    Simulator,
    decode_range,
)
from collector_plugin.simulator.standalone import describe, serve

__all__ = [
    "ALL_QUIRKS",
    "DEFAULT_AK",
    "DEFAULT_QUIRKS",
    "DEFAULT_SK",
    "CallCount",
    "Event",
    "FaultInjector",
    "FaultRule",
    "FlowLimit",
    "LogGenerator",
    "RequestLog",
    "Scenario",
    "Service",
    "Simulator",
    "TaskLog",
    "TrainingJob",
    "Update",
    "V1Job",
    "decode_range",
    "describe",
    "edge_detail",
    "receiver_config",
    "receiver_yaml",
    "serve",
]
