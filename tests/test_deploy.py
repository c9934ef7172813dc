"""The Kubernetes manifests in ``deploy/kubernetes/`` are valid, and agree with towtruck.

The schema check is ``kubernetes-validate``: it ships the Kubernetes JSON schemas of
every recent release inside the wheel, so it runs offline (no cluster, no download),
and its *strict* schemas refuse unknown fields, the usual way a manifest goes wrong
(a misspelt ``livenessprobe`` is silently dropped by a lenient check). The other
checks tie the manifests to towtruck itself: the flags and variables the container is
given are ones ``towtruck serve`` takes, with values its settings accept; the probes
are routes a node answers; the grace period covers the shutdown budget.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import trio
import yaml

import towtruck
from tests.helpers import NETWORK_TEST_SECONDS, wait_until
from towtruck.settings import flag

pytestmark = pytest.mark.parser_free

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
#: The oldest release the manifests are for (the preStop ``sleep`` action is on by
#: default from 1.30) and the newest whose schema the validator ships.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
#: What the downward API gives the pod, for the checks that expand ``$(VAR)``.
SAMPLE_FIELDS = {"status.podIP": "10.0.0.7", "metadata.namespace": "towtruck-test"}
#: A cluster key towtruck accepts, standing in for the Secret's value.
SAMPLE_KEY = "k" * 32
#: Time a Python process needs to exit once towtruck's shutdown budget is spent.
MARGIN_SECONDS = 2
#: The settings' environment variables: ``TOWTRUCK_<NAME>``.
SETTING_NAMES = frozenset(field.name for field in dataclasses.fields(towtruck.Settings))


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(DEPLOY.glob("*.yaml")):
        with path.open() as file:
            for document in yaml.safe_load_all(file):
                if document is not None:
                    yield path.name, document


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object (the kustomization is kustomize's, not the API's)."""
    return [(name, doc) for name, doc in _documents() if doc["kind"] != "Kustomization"]


def _only(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        doc
        for _, doc in _manifests()
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod() -> dict[str, Any]:
    return _only("Deployment")["spec"]["template"]  # type: ignore[no-any-return]


def _container() -> dict[str, Any]:
    (container,) = _pod()["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _expand(text: str, env: dict[str, str]) -> str:
    """``$(NAME)`` replaced as the kubelet does; an undefined name fails the test (the
    kubelet would leave it as it is, and towtruck would get ``$(NAME)`` literally)."""

    def value(match: re.Match[str]) -> str:
        assert match[1] in env, f"$({match[1]}) is not defined before it is used"
        return env[match[1]]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, text)


def _environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's variables as the kubelet sets them, with sample values for the
    downward API and :data:`SAMPLE_KEY` for the Secret."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "fieldRef" in source:
            env[item["name"]] = SAMPLE_FIELDS[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            env[item["name"]] = SAMPLE_KEY
        else:
            env[item["name"]] = _expand(item["value"], env)
    return env


@functools.cache
def _serve_options() -> dict[str, bool]:
    """The options of ``towtruck serve``, from its ``--help``: whether each takes a value."""
    result = subprocess.run(
        [sys.executable, "-m", "towtruck", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=NETWORK_TEST_SECONDS,
    )
    usage = result.stdout.split("\n\n")[0]
    options = re.findall(r"\[(--[a-z][a-z-]*)(?: ([A-Z_:]+))?\]", usage)
    assert options, f"no options found in:\n{usage}"
    return {option: bool(metavar) for option, metavar in options}


def _serve_settings(container: dict[str, Any]) -> towtruck.Settings:
    """The settings the container's node runs with, read as ``towtruck serve`` reads them.

    Fails the test on an option ``towtruck serve`` does not take, a ``TOWTRUCK_*``
    variable that is not a setting, or a value the settings refuse.
    """
    env = _environment(container)
    assert container["command"] == ["towtruck"]
    args = [_expand(arg, env) for arg in container["args"]]
    assert args[0] == "serve"
    module, _, attribute = args[1].partition(":")
    assert callable(getattr(importlib.import_module(module), attribute or "create_actor"))
    options = _serve_options()
    by_flag = {flag(name): name for name in SETTING_NAMES}
    flags: dict[str, Any] = {}
    rest = iter(args[2:])
    for arg in rest:
        option, equals, value = arg.partition("=")
        assert option in options, f"towtruck serve takes no {option}"
        if not options[option]:
            assert not equals, f"{option} takes no value"
            off = option.startswith("--no-")
            flags[by_flag["--" + option.removeprefix("--no-")]] = not off
            continue
        if not equals:
            value = next(rest)
        name = by_flag[option]
        flags[name] = [*flags.get(name, []), value] if name == "peers" else value
    for variable in env:
        if variable.startswith("TOWTRUCK_"):
            assert variable.removeprefix("TOWTRUCK_").lower() in SETTING_NAMES, variable
    return towtruck.Settings.load(flags=flags, environ=env)


def _container_port(port: int | str) -> int:
    """A probe's or Service's port, named or numbered, as the container's number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in _container()["ports"] if p["name"] == port]
    return number  # type: ignore[no-any-return]


def _selects_the_pods(selector: dict[str, str]) -> bool:
    labels = _pod()["metadata"]["labels"]
    return bool(selector) and selector.items() <= labels.items()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schema(version: str) -> None:
    manifests = _manifests()
    assert {doc["kind"] for _, doc in manifests} == {
        "Deployment",
        "Service",
        "Secret",
        "PodDisruptionBudget",
    }
    for name, document in manifests:
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {document['kind']}: {exc.message} at {list(exc.path)}")


def test_the_schema_check_refuses_an_unknown_field() -> None:
    deployment = copy.deepcopy(_only("Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessprobe"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="livenessprobe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    (kustomization,) = [doc for _, doc in _documents() if doc["kind"] == "Kustomization"]
    files = {name for name, doc in _documents() if doc["kind"] != "Kustomization"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_the_container_runs_towtruck_serve_with_settings_it_accepts() -> None:
    settings = _serve_settings(_container())
    assert settings.host == "0.0.0.0"
    assert settings.cluster_key == SAMPLE_KEY
    assert settings.workers == 1  # --advertise with --workers is refused (see README)
    assert settings.state_store == "memory:"  # nothing to write on the read-only root


def test_the_node_advertises_its_pod_address_and_finds_peers_in_the_headless_service() -> None:
    settings = _serve_settings(_container())
    headless = _only("Service", "towtruck-headless")
    (port,) = headless["spec"]["ports"]
    assert settings.advertise == f"{SAMPLE_FIELDS['status.podIP']}:{settings.port}"
    namespace = SAMPLE_FIELDS["metadata.namespace"]
    name = headless["metadata"]["name"]
    assert settings.peer_dns == f"{name}.{namespace}.svc.cluster.local:{port['port']}"
    assert _container_port(port["targetPort"]) == settings.port


def test_the_client_service_reaches_the_node_port() -> None:
    settings = _serve_settings(_container())
    service = _only("Service", "towtruck")
    assert service["spec"].get("clusterIP") != "None"
    assert [_container_port(p["targetPort"]) for p in service["spec"]["ports"]] == [settings.port]


def test_the_headless_service_and_the_budget_select_the_deployments_pods() -> None:
    deployment = _only("Deployment")
    assert _selects_the_pods(deployment["spec"]["selector"]["matchLabels"])
    for _, service in [(n, d) for n, d in _manifests() if d["kind"] == "Service"]:
        assert _selects_the_pods(service["spec"]["selector"]), service["metadata"]["name"]
    headless = _only("Service", "towtruck-headless")["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["publishNotReadyAddresses"] is True
    budget = _only("PodDisruptionBudget")["spec"]
    assert _selects_the_pods(budget["selector"]["matchLabels"])
    assert budget["maxUnavailable"] == 1
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert (rolling["maxSurge"], rolling["maxUnavailable"]) == (1, 0)


def test_the_grace_period_covers_the_pre_stop_sleep_and_the_shutdown_budget() -> None:
    settings = _serve_settings(_container())
    pre_stop = _container()["lifecycle"]["preStop"]
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep >= 1
    grace = _pod()["spec"]["terminationGracePeriodSeconds"]
    assert grace >= sleep + settings.shutdown_budget + MARGIN_SECONDS, (
        f"terminationGracePeriodSeconds {grace} < preStop {sleep}"
        f" + shutdown budget {settings.shutdown_budget:g} + margin {MARGIN_SECONDS}"
    )


def test_the_probes_and_the_scrape_annotations_use_the_node_port() -> None:
    settings = _serve_settings(_container())
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert _container_port(container[probe]["httpGet"]["port"]) == settings.port, probe
    annotations = _pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_secret_holds_the_key_and_its_placeholder_is_refused() -> None:
    (variable,) = [item for item in _container()["env"] if item["name"] == "TOWTRUCK_CLUSTER_KEY"]
    reference = variable["valueFrom"]["secretKeyRef"]
    secret = _only("Secret", reference["name"])
    placeholder = secret["stringData"][reference["key"]]
    # Applied unchanged, the pods refuse to start rather than share a published key.
    with pytest.raises(towtruck.SettingsError, match="TOWTRUCK_CLUSTER_KEY"):
        towtruck.Settings.load(environ={"TOWTRUCK_CLUSTER_KEY": placeholder})


def test_the_membership_tables_shown_in_comments_are_urls_towtruck_takes() -> None:
    text = (DEPLOY / "deployment.yaml").read_text()
    urls = re.findall(r"#\s+- name: TOWTRUCK_MEMBERSHIP\n\s*#\s+value: (\S+)", text)
    assert {url.partition(":")[0] for url in urls} == {"redis", "postgresql", "etcd"}
    for url in urls:
        assert towtruck.Settings(membership=url).membership == url


async def test_the_probe_and_metrics_paths_are_routes_a_node_answers(
    http: httpx.AsyncClient,
) -> None:
    from examples.greeter import create_actor

    container = _container()
    paths = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "startupProbe")]
    paths += [container["readinessProbe"]["httpGet"]["path"]]
    paths += [_pod()["metadata"]["annotations"]["prometheus.io/path"]]
    with trio.fail_after(NETWORK_TEST_SECONDS):
        # With a cluster key, as in the Deployment: the kubelet and Prometheus send none.
        async with towtruck.open_node(
            create_actor, port=0, cluster_key=SAMPLE_KEY, state_store="memory:"
        ) as node:

            async def answers(path: str) -> bool:
                response = await http.get(f"{node.url}{path}")
                if response.status_code == 503:  # /ready, until the node has settled
                    return False
                assert response.status_code == 200, (path, response.text)
                return True

            for path in paths:
                await wait_until(functools.partial(answers, path))
