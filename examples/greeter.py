"""The README's greeter: ``GET /invoke/1/hello`` answers ``{"hello": "from actor 1"}``.

Run it with ``towtruck serve examples.greeter:create_actor --port 8080``.
"""

import towtruck


class Greeter:
    def __init__(self, id: str, client: towtruck.Client):
        self.id, self.client = id, client

    async def hello(self, data):
        return {"hello": f"from actor {self.id}"}


def create_actor(id: str, client: towtruck.Client) -> Greeter:
    return Greeter(id, client)
