"""The procedure kit without a cluster: typed results survive the JSON round trip Redis gives
them, the registry gives a name to one module only, admission overrides, the kube kit's paths
and conditions, and the setting that loads procedure modules."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from bot.cluster.kube import CSR, MACHINE, NODE, csr_pending, parse_conditions
from bot.config import load_settings
from bot.procedure import (
    Admission,
    Procedure,
    RunId,
    StepContext,
    StepFailed,
    StepId,
    StepResult,
    Verdict,
    admit,
    build_procedure,
    register,
    registered,
    result_from,
    result_values,
)


@dataclass(frozen=True)
class Inner:
    sha256: str
    size: int


@dataclass(frozen=True)
class Outer:
    host: str
    candidates: tuple[str, ...]
    files: dict[str, Inner]
    started: float
    member: str | None = None
    note: str = ""


def context(**results: StepResult) -> StepContext:
    async def beat(_text: str) -> None:
        return None

    return StepContext(run_id=RunId("r1"), cluster=None, settings=None, parameters={}, kube=None,  # type: ignore[arg-type]
                       hosts=None, results={StepId(k): v for k, v in results.items()}, heartbeat=beat)  # type: ignore[arg-type]


def test_a_typed_result_survives_json_and_reads_back() -> None:
    value = Outer(host="m-a", candidates=("m-a", "m-b"), files={"snap.db": Inner("ab" * 32, 10)}, started=3, member=None)
    stored = json.loads(json.dumps(StepResult.of("done", value).values))  # what Redis gives back
    assert stored["candidates"] == ["m-a", "m-b"]
    back = result_from(Outer, stored)
    assert back == Outer(host="m-a", candidates=("m-a", "m-b"), files={"snap.db": Inner("ab" * 32, 10)}, started=3.0)
    assert isinstance(back.started, float) and isinstance(back.files["snap.db"], Inner)
    ctx = context(pick=StepResult(summary="", values=stored))
    assert ctx.result(StepId("pick"), Outer).candidates == ("m-a", "m-b")


def test_a_missing_or_malformed_result_is_a_failure_the_user_can_act_on() -> None:
    with pytest.raises(StepFailed, match="left no result"):
        context().result(StepId("pick"), Outer)
    with pytest.raises(StepFailed, match="not a Outer"):
        context(pick=StepResult(summary="", values={"host": "x"})).result(StepId("pick"), Outer)
    with pytest.raises(TypeError):
        result_values({"host": "x"})


def test_a_name_belongs_to_one_module() -> None:
    def build(_parameters: object) -> Procedure:
        return Procedure(name="unit-proc", title="Unit", chapter="0", steps=())

    register("unit-proc", build, title="Unit")
    register("unit-proc", build, title="Unit")  # the same module again (a re-import): fine
    assert build_procedure("unit-proc", {}).title == "Unit"
    other = type(build)(build.__code__, {"Procedure": Procedure}, "other")
    other.__module__ = "somewhere.else"
    with pytest.raises(ValueError, match="registered by"):
        register("unit-proc", other, title="Other")
    with pytest.raises(KeyError, match="no procedure named 'nope'"):
        registered("nope")


async def test_admission_overrides_only_the_warning_named() -> None:
    async def peak(_ctx: StepContext) -> Admission:
        return Admission.warn("busy hours", override="peak-hours", label="Go anyway")

    async def broken(_ctx: StepContext) -> Admission:
        raise StepFailed("cannot read the cluster", next_action="Check the API.")

    procedure = Procedure(name="p", title="P", chapter="0", steps=(), admission=peak)
    assert (await admit(procedure, context())).verdict is Verdict.WARN
    ctx = context()
    ctx.overrides = frozenset({"other"})
    assert (await admit(procedure, ctx)).verdict is Verdict.WARN
    ctx.overrides = frozenset({"peak-hours"})
    assert (await admit(procedure, ctx)).admitted
    refused = await admit(Procedure(name="p", title="P", chapter="0", steps=(), admission=broken), context())
    assert refused.verdict is Verdict.REFUSE and refused.next_action == "Check the API."
    assert (await admit(Procedure(name="p", title="P", chapter="0", steps=()), context())).admitted
    with pytest.raises(ValueError):
        Admission.warn("x", override="", label="")


def test_kube_paths_and_conditions() -> None:
    assert NODE.path(name="m-a") == "/api/v1/nodes/m-a"
    assert CSR.path(name="csr-1", sub="approval") == "/apis/certificates.k8s.io/v1/certificatesigningrequests/csr-1/approval"
    assert MACHINE.path(namespace="openshift-machine-api") == "/apis/machine.openshift.io/v1beta1/namespaces/openshift-machine-api/machines"
    for bad in ("../x", "a/b", "A"):
        with pytest.raises(ValueError):
            NODE.path(name=bad)
    with pytest.raises(ValueError, match="namespaced"):
        MACHINE.path(name="m")
    csr = {"status": {"conditions": [{"type": "Approved", "status": "True", "reason": "r"}]}}
    assert not csr_pending(csr) and csr_pending({"status": {}})
    (condition,) = parse_conditions(csr)
    assert condition.true and condition.reason == "r"


def test_procedure_modules_setting(tmp_path) -> None:
    (tmp_path / "kubeconfig").write_text("x")
    base = {"ETCDBOT_SLACK_BOT_TOKEN": "xoxb-x", "ETCDBOT_SLACK_APP_TOKEN": "xapp-x",
            "ETCDBOT_CLUSTERS": json.dumps([{"name": "lab", "kubeconfig": str(tmp_path / "kubeconfig")}])}
    settings = load_settings(environ={**base, "ETCDBOT_PROCEDURE_MODULES": " tests.kit.sample_procedure, a.b "})
    assert settings.procedure_modules == ("tests.kit.sample_procedure", "a.b")
    assert settings.closed
    from bot.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape("ETCDBOT_PROCEDURE_MODULES")):
        load_settings(environ={**base, "ETCDBOT_PROCEDURE_MODULES": "a;rm -rf /"})
