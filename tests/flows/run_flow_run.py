"""Execute flow runs of deployments in this process, as a worker's subprocess would: ``python run_flow_run.py
<flow run id>...`` with ``PREFECT_API_URL`` set, one run after the other. The flow comes from the deployment's
entrypoint (relative to the repository root, the working directory); each run keeps its id, so its events name the
deployment. Prints each final state's type, one line per run, in the order given. Used by the tests that need runs
of deployments without the cost of a worker (several independent runs share one process: its start-up, importing
Prefect and the flows, is most of what a run costs here)."""

from __future__ import annotations

import asyncio
import sys
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow_async
from prefect.flows import load_flow_from_entrypoint


async def main(flow_run_id: str) -> str:
    async with get_client() as client:
        flow_run = await client.read_flow_run(UUID(flow_run_id))
        deployment = await client.read_deployment(flow_run.deployment_id)
    flow = load_flow_from_entrypoint(deployment.entrypoint)
    state = await run_flow_async(flow, flow_run=flow_run, parameters=flow_run.parameters, return_type="state")
    return state.type.value


async def run_all(flow_run_ids: list[str]) -> None:
    for flow_run_id in flow_run_ids:
        print(await main(flow_run_id), flush=True)


if __name__ == "__main__":
    asyncio.run(run_all(sys.argv[1:]))
