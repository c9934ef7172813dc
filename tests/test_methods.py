import pytest

from tests.actors import Recorder
from towtruck.methods import hook, methods_of


def test_only_public_class_functions_are_callable() -> None:
    actor = Recorder("1", client=None)  # type: ignore[arg-type]
    names = set(methods_of(actor))
    assert {"echo", "plain", "no_data", "static", "fail", "call"} <= names
    for hidden in [
        "_private",
        "activate",
        "deactivate",
        "secret",
        "id",
        "client",
        "prop",
        "__init__",
        "__class__",
        "__dict__",
    ]:
        assert hidden not in names


def test_tables_are_shared_per_class() -> None:
    assert methods_of(Recorder("1", None)) is methods_of(Recorder("2", None))  # type: ignore[arg-type]


def test_calling_passes_data_only_where_taken() -> None:
    actor = Recorder("1", client=None)  # type: ignore[arg-type]
    methods = methods_of(actor)
    assert methods["plain"].call(actor, 3) == "plain 3"
    assert methods["static"].call(actor, 3) == "static"
    assert not methods["no_data"].takes_data
    assert methods["echo"].is_async
    assert not methods["plain"].is_async


def test_mapping_actors() -> None:
    def hello(data: object) -> str:
        return "hi"

    def activate() -> None:
        pass

    actor = {"hello": hello, "lat": 0, "_x": hello, "activate": activate, 3: hello}
    methods = methods_of(actor)
    assert set(methods) == {"hello"}
    assert methods["hello"].call(actor, None) == "hi"
    assert hook(actor, "activate") is activate
    assert hook(actor, "deactivate") is None


@pytest.mark.parametrize("bad", [None, "text", 3])
def test_non_actors_are_refused(bad: object) -> None:
    with pytest.raises(TypeError, match="create_actor returned"):
        methods_of(bad)
