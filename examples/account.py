"""The README's account: a balance kept in the state store, fenced by epoch.

Run it with ``towtruck serve examples.account:create_actor --port 8080``, then
``curl -X POST localhost:8080/invoke/alice/deposit -d '{"amount": 5}'`` and
``curl localhost:8080/invoke/alice/balance``. Stop the node, start it again: the
balance is still there (in ``towtruck-state.sqlite3``, the default store).
"""

import towtruck


class Account:
    def __init__(self, id: str, client: towtruck.Client, context: towtruck.ActorContext):
        self.state = context.persistent(default=dict)  # loaded before activate() runs

    async def deposit(self, data):
        amount = data["amount"]
        if not isinstance(amount, int) or amount <= 0:
            raise ValueError("amount must be a positive whole number")
        self.state.value["balance"] = self.state.value.get("balance", 0) + amount
        await self.state.write()  # durable once this returns
        return self.state.value

    async def withdraw(self, data):
        balance = self.state.value.get("balance", 0)
        if data["amount"] > balance:
            raise ValueError(f"insufficient funds: the balance is {balance}")
        self.state.value["balance"] = balance - data["amount"]
        await self.state.write()
        return self.state.value

    async def balance(self, data):
        return self.state.value


def create_actor(id: str, client: towtruck.Client, context: towtruck.ActorContext) -> Account:
    return Account(id, client, context)
