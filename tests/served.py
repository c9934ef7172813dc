"""Apps for ``hypercorn --worker-class trio tests.served:app``: its actors print their
lifecycle to stdout so the test can see ``deactivate`` run at shutdown;
``tests.served:logged_app`` serves counters with the access log on."""

import sys

import trio

import towtruck
from tests.actors import create_counter


class Printer:
    def __init__(self, id: str, client: towtruck.Client) -> None:
        self.id = id

    async def activate(self) -> None:
        print(f"activate {self.id}", flush=True)

    async def hello(self, data: object) -> dict[str, str]:
        return {"hello": f"from actor {self.id}"}

    async def sleep(self, data: list[str]) -> str:
        await trio.sleep(float(data[0]))
        return "slept"

    def exit(self, data: object) -> None:
        sys.exit(3)  # as a library might: it must fail this call only

    async def deactivate(self) -> None:
        print(f"deactivate {self.id}", flush=True)


def create_actor(id: str, client: towtruck.Client) -> Printer:
    return Printer(id, client)


app = towtruck.App(create_actor)
logged_app = towtruck.App(create_counter, access_log=True)
