"""Execute one flow run of a deployment in this process, as a worker's subprocess would: ``python run_flow_run.py
<flow run id>`` with ``PREFECT_API_URL`` set. The flow comes from the deployment's entrypoint (relative to the
repository root, the working directory); the run keeps its id, so its events name the deployment. Prints the final
state's type. Used by the tests that need runs of deployments without the cost of a worker."""

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


if __name__ == "__main__":
    print(asyncio.run(main(sys.argv[1])))
