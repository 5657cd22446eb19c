"""The time-limit warning counts to the moment the desktop really stops: Slurm's early stop
signal (`--signal B:USR1@scheduler.signal_lead`), not the job's time limit."""

from __future__ import annotations

import time
from typing import Any

import pytest

from hpcdesk.node.agent import Agent
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig


def agent_started(ago: float, *, time_limit: int, signal_lead: int, warn_before: int
                  ) -> tuple[Agent, list[str]]:
    """An agent whose desktop started `ago` seconds back; its phase updates are recorded."""
    agent = Agent.__new__(Agent)
    agent.request = DesktopRequest(
        session_id="abcdef", user="u", cpus=1, gpus=0, start_timeout=60,
        desktop=DesktopConfig(), runtime=RuntimeConfig(), network=NetworkConfig(),
        time_limit=time_limit, warn_before=warn_before, signal_lead=signal_lead)
    agent.state = {"times": {"agent_start": time.time() - ago}}
    agent.warned, agent.started, agent.children = False, None, []
    details: list[str] = []

    def phase(_phase: str, detail: str = "", **_fields: Any) -> None:
        details.append(detail)

    agent.phase = phase  # type: ignore[method-assign]
    return agent, details


@pytest.mark.parametrize(("ago", "warned"), [(0, False), (25, False), (35, True)])
def test_warn_before_counts_from_the_stop_signal(ago: float, warned: bool) -> None:
    """A 2 minute job stopped 60 s early: warn_before=30 warns 30 s before the stop, at 30 s
    (counting from the time limit it would warn at 90 s, after the desktop was gone)."""
    agent, details = agent_started(ago, time_limit=120, signal_lead=60, warn_before=30)
    agent.warn_time_limit()
    assert bool(details) is warned, details
    if warned:
        assert "ends in about 1 min" in details[0]
        assert agent.state["warning"]["message"] == details[0]


def test_the_minutes_said_are_the_minutes_left_before_the_stop() -> None:
    """warn_before=150 on a 10 minute job with a 2 minute signal lead: the desktop stops 8 min
    after the start, so 6 min in the warning says about 2 min (not 4, and not too late)."""
    agent, details = agent_started(6 * 60, time_limit=600, signal_lead=120, warn_before=150)
    agent.warn_time_limit()
    assert details and "ends in about 2 min" in details[0], details
    early, none = agent_started(5 * 60, time_limit=600, signal_lead=120, warn_before=150)
    early.warn_time_limit()
    assert none == []  # three minutes before the stop: not yet
