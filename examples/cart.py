"""The README's cart: a durable reminder expires it, a timer flushes it.

Run it with ``towtruck serve examples.cart:create_actor --port 8080``, then
``curl -X POST localhost:8080/invoke/c1/add -d '{"item": "tea", "expire_after": 10}'``
and ``curl localhost:8080/invoke/c1/items``: ten seconds later the cart is empty,
even if the node was restarted (or, in a cluster, lost) meanwhile.
"""

import logging

import towtruck

logger = logging.getLogger("examples.cart")


class Cart:
    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
        self.id, self.context = id, context
        self.state = context.persistent(default=lambda: {"items": [], "expired": 0})
        self.unflushed = 0

    async def add(self, data):
        self.state.value["items"].append(data["item"])
        await self.state.write()
        # a durable reminder: survives collection, restarts and node loss
        after = data.get("expire_after", 3600)
        await self.context.remind("expire", after=after, data={"reason": "idle cart"})
        # a timer: lives only while this activation does
        self.context.timer("flush", self.flush, every=5.0)
        self.unflushed += 1
        return self.state.value

    async def items(self, data):
        return self.state.value

    async def receive_reminder(self, reminder: towtruck.Reminder):
        # reminder.name, .data, .scheduled_at, .tick_id, .missed
        if reminder.name == "expire":
            self.state.value = {"items": [], "expired": self.state.value["expired"] + 1}
            await self.state.write()

    async def flush(self):
        if self.unflushed:
            logger.info("cart %s: %d additions flushed", self.id, self.unflushed)
            self.unflushed = 0


def create_actor(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> Cart:
    return Cart(id, client, context)
