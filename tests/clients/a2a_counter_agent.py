"""A2A agent (a2a-sdk, JSON-RPC binding) for the end-to-end tests.

Usage: a2a_counter_agent.py BIND_HOST PORT
"count N" makes a task that reports `tick i` N times, 0.3 s apart, then completes with an
artifact "counted to N". Its card advertises http://127.0.0.1:PORT/ whatever BIND_HOST is, so
a forward must listen on 127.0.0.1 with the same port (the absolute-URL trap of A2A cards).
"""
import asyncio
import sys

import uvicorn
from starlette.applications import Starlette

from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Role, TaskState


class Counter(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue) -> None:
        n = int(context.get_user_input().split()[-1])
        task = context.current_task or new_task_from_user_message(context.message)
        await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        for i in range(n):
            message = new_text_message(f"tick {i}", context_id=task.context_id, task_id=task.id, role=Role.ROLE_AGENT)
            await updater.update_status(TaskState.TASK_STATE_WORKING, message)
            await asyncio.sleep(0.3)
        await updater.add_artifact([new_text_part(f"counted to {n}")], name="count")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue) -> None:
        task = context.current_task
        if task is not None:
            await TaskUpdater(event_queue, task.id, task.context_id).cancel()


def build_app(url: str) -> Starlette:
    """The counter agent as an ASGI app whose card advertises `url`."""
    card = AgentCard(
        name="counter",
        description="Counts, slowly, to show streaming",
        version="1.0.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="count", name="count", description="count N", tags=["test"])],
    )
    handler = DefaultRequestHandler(agent_executor=Counter(), task_store=InMemoryTaskStore(), agent_card=card)
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, rpc_url="/")
    return Starlette(routes=routes)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(build_app(f"http://127.0.0.1:{port}/"), host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
