"""Actors calling actors, including themselves (the Node README's second example).

    GET /invoke/1/hello         actor 1 calls its own goodbye: {"goodbye": "from actor 1"}
    GET /invoke/1/ask/2         1 asks 2, which calls back into 1 (A -> B -> A)

A call made during a turn carries the chain of actors waiting on it, so a call back
into one of them runs at once instead of waiting behind the turn that caused it.

This factory returns a mapping of names to functions, the Node project's style; an
object with methods works the same way.
"""

import towtruck


def create_actor(id: str, client: towtruck.Client) -> dict:
    async def hello(data):
        return await client.invoke(id, "goodbye")

    async def goodbye(data):
        return {"goodbye": f"from actor {id}"}

    async def ask(data):
        (other,) = data
        return await client.invoke(other, "answer", id)

    async def answer(asker):
        back = await client.invoke(asker, "goodbye")
        return {"answer": f"from actor {id}", "asker says": back["goodbye"]}

    return {"hello": hello, "goodbye": goodbye, "ask": ask, "answer": answer}
