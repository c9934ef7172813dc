"""The Node project's test.js in Python: an actor that remembers a position.

    GET  /invoke/1/setposition/-29.4758/-100.4162     (path segments are the data)
    POST /invoke/1/setposition  {"lat": -29.4758, "lon": -100.4162}
    GET  /invoke/1/getposition  ->  {"lat": -29.4758, "lon": -100.4162}

``activate`` runs before the actor's first call and ``deactivate`` when it is
collected (idle for ``max_inactivity``) or the node stops; both just log here, where a
real actor would load and save its state.
"""

import logging

import towtruck

logger = logging.getLogger("examples.position")


class Position:
    def __init__(self, id: str, client: towtruck.Client):
        self.id = id
        self.lat = 0.0
        self.lon = 0.0

    async def activate(self):
        logger.info("actor %s: getting ready", self.id)

    async def setposition(self, data):
        if isinstance(data, dict):
            lat, lon = data["lat"], data["lon"]
        else:
            lat, lon = data
        self.lat, self.lon = float(lat), float(lon)

    async def getposition(self, data):
        return {"lat": self.lat, "lon": self.lon}

    async def deactivate(self):
        logger.info("actor %s: bye bye", self.id)


def create_actor(id: str, client: towtruck.Client) -> Position:
    return Position(id, client)
