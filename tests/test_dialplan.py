"""dialplan/extensions_aigw.conf: syntax and the rules of docs/PROTOCOLS.md §1.5 and §5.

Two checks: ``asterisklint`` (PyPI) when it is installed, and always our own
parser below, which knows what asterisklint does not: which AIGW_* variables exist,
that AudioSocket runs only answered and inside TryExec, MixMonitor without ``b``,
and that caller-controlled values never reach an application argument.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from audiosocket_gw.attended import ATTENDED_VARIABLES
from audiosocket_gw.callcontrol import DIAL_RESULT_VARIABLES, DIAL_VARIABLES
from audiosocket_gw.routing import (
    DEPLOYMENT_VARIABLES,
    ORIGINATE_VARIABLES,
    ROUTE_VARIABLES,
    originate_variables,
    route_variables,
)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "dialplan" / "extensions_aigw.conf"
SET_BY_DIALPLAN = {"AIGW_BRIDGE", "AIGW_STATUS", *DIAL_RESULT_VARIABLES}
CALLER_CONTROLLED = ("${EXTEN", "${CALLERID", "${CONNECTEDLINE", "${RDNIS", "${DNID",
                     "${CHANNEL(name", "${SIP_HEADER", "${PJSIP_HEADER")


@dataclass
class Step:
    line: int
    prio: int
    label: str | None
    app: str
    data: str


@dataclass
class Dialplan:
    contexts: dict[str, dict[str, list[Step]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def steps(self):
        for ctx, exts in self.contexts.items():
            for ext, steps in exts.items():
                for st in steps:
                    yield ctx, ext, st


_EXTEN = re.compile(r"exten\s*=>\s*([^,]+),(\d+|n)(?:\(([A-Za-z0-9_-]+)\))?,(.*)$")
_SAME = re.compile(r"same\s*=>\s*(\d+|n)(?:\(([A-Za-z0-9_-]+)\))?,(.*)$")
_APP = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\((.*)\)$|([A-Za-z][A-Za-z0-9_]*)$")


def balanced(s: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for c in s:
        if c in "([{":
            stack.append(c)
        elif c in pairs:
            if not stack or stack.pop() != pairs[c]:
                return False
    return not stack


def split_args(data: str) -> list[str]:
    """Top-level comma split (commas inside (), [] and {} do not split)."""
    out, depth, cur = [], 0, []
    for c in data:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    out.append("".join(cur))
    return out


def parse(text: str) -> Dialplan:
    dp = Dialplan()
    ctx: str | None = None
    ext: str | None = None
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].strip() if not raw.lstrip().startswith(";") else ""
        if not line:
            continue
        if line.startswith("["):
            m = re.fullmatch(r"\[([A-Za-z0-9_-]+)\]", line)
            if not m:
                dp.errors.append(f"{no}: bad context header {line!r}")
                continue
            ctx = m.group(1)
            if ctx in dp.contexts:
                dp.errors.append(f"{no}: context {ctx} defined twice")
            dp.contexts[ctx] = {}
            ext = None
            continue
        if ctx is None:
            dp.errors.append(f"{no}: line outside a context")
            continue
        m = _EXTEN.fullmatch(line)
        if m:
            ext, prio_s, label, body = m.group(1).strip(), m.group(2), m.group(3), m.group(4)
            if prio_s != "1":
                dp.errors.append(f"{no}: extension {ext} must start at priority 1")
            if ext in dp.contexts[ctx]:
                dp.errors.append(f"{no}: extension {ext} defined twice in {ctx}")
            dp.contexts[ctx][ext] = []
            prio = 1
        else:
            m = _SAME.fullmatch(line)
            if not m:
                dp.errors.append(f"{no}: not exten/same: {line!r}")
                continue
            if ext is None:
                dp.errors.append(f"{no}: 'same' without an extension")
                continue
            if m.group(1) != "n":
                dp.errors.append(f"{no}: use n priorities after the first")
            label, body = m.group(2), m.group(3)
            prio = len(dp.contexts[ctx][ext]) + 1
        am = _APP.fullmatch(body.strip())
        if not am:
            dp.errors.append(f"{no}: bad application call {body!r}")
            continue
        app, data = (am.group(1), am.group(2)) if am.group(1) else (am.group(3), "")
        if not balanced(data):
            dp.errors.append(f"{no}: unbalanced brackets in {app}({data})")
        steps = dp.contexts[ctx][ext]
        if label and any(s.label == label for s in steps):
            dp.errors.append(f"{no}: label {label} twice in {ctx},{ext}")
        steps.append(Step(no, prio, label, app, data))
    return dp


def goto_targets(ctx: str, ext: str, st: Step) -> list[tuple[str, str, str]]:
    """(context, extension, priority-or-label) of every jump the step can make."""
    targets: list[str] = []
    if st.app == "GotoIf":
        _, _, branches = st.data.partition("?")
        targets = [b for b in branches.split(":") if b]
    elif st.app in ("Goto", "Gosub"):
        targets = [st.data]
    elif st.app == "Set" and st.data.startswith("CHANNEL(hangup_handler_push)="):
        targets = [st.data.split("=", 1)[1]]
    out = []
    for t in targets:
        parts = split_args(re.sub(r"\(.*\)$", "", t))
        if len(parts) == 1:
            out.append((ctx, ext, parts[0]))
        elif len(parts) == 2:
            out.append((ctx, parts[0], parts[1]))
        else:
            out.append((parts[0], parts[1], parts[2]))
    return out


def check(dp: Dialplan) -> list[str]:
    """Every rule; returns the problems found (empty = good)."""
    errors = list(dp.errors)
    allowed = set(ROUTE_VARIABLES) | set(ORIGINATE_VARIABLES) | set(DEPLOYMENT_VARIABLES) \
        | set(DIAL_VARIABLES) | set(ATTENDED_VARIABLES) | SET_BY_DIALPLAN
    for ctx, ext, st in dp.steps():
        where = f"line {st.line} ({ctx},{ext},{st.prio})"
        for var in re.findall(r"[$^]\{(?:[A-Z]+\()?(AIGW_[A-Z0-9_]+)", st.data):
            if var not in allowed:
                errors.append(f"{where}: reads {var}, which nothing sets")
        for bad in CALLER_CONTROLLED:
            if bad in st.data:
                errors.append(f"{where}: caller-controlled {bad}...}} in {st.app}()")
        for c, e, p in goto_targets(ctx, ext, st):
            steps = dp.contexts.get(c, {}).get(e)
            if steps is None:
                errors.append(f"{where}: jump to missing {c},{e}")
            elif not (p.isdigit() and 1 <= int(p) <= len(steps)) and \
                    not any(s.label == p for s in steps):
                errors.append(f"{where}: jump to missing priority/label {c},{e},{p}")
        if st.app == "MixMonitor":
            args = split_args(st.data)
            if len(args) > 1 and "b" in args[1]:
                errors.append(f"{where}: MixMonitor option b records nothing during AudioSocket")
        if st.app == "AudioSocket" or (st.app != "TryExec" and "AudioSocket(" in st.data):
            errors.append(f"{where}: AudioSocket outside TryExec()")
        if st.app == "TryExec" and st.data.startswith("AudioSocket("):
            inner = st.data[len("AudioSocket("):-1]
            if len(split_args(inner)) != 2:
                errors.append(f"{where}: AudioSocket takes exactly two arguments")
            before = dp.contexts[ctx][ext][: st.prio - 1]
            if not any(s.app == "Answer" for s in before):
                errors.append(f"{where}: AudioSocket before Answer()")
            follow = dp.contexts[ctx][ext][st.prio:]
            if not follow or "TRYSTATUS" not in follow[0].data:
                errors.append(f"{where}: TRYSTATUS not checked right after AudioSocket")
    # LOCAL() only inside a Gosub routine (app_stack.c: elsewhere the write is refused,
    # "Tried to set LOCAL(...), but we aren't within a Gosub routine").
    gosub_contexts = set()
    for c, e, st in dp.steps():
        if st.app == "Gosub" or (st.app == "Set" and
                                 st.data.startswith("CHANNEL(hangup_handler_push)=")):
            gosub_contexts.update(t[0] for t in goto_targets(c, e, st))
    goto_contexts = {t[0] for c, e, st in dp.steps() if st.app in ("Goto", "GotoIf")
                     for t in goto_targets(c, e, st) if t[0] != c}
    for ctx, ext, st in dp.steps():
        if "LOCAL(" in st.data and (ctx not in gosub_contexts or ctx in goto_contexts):
            errors.append(f"line {st.line} ({ctx},{ext},{st.prio}): LOCAL() outside a Gosub")
    # The hangup handler must Return.
    for c, e, st in dp.steps():
        if st.app == "Set" and st.data.startswith("CHANNEL(hangup_handler_push)="):
            hc, he, _ = goto_targets(c, e, st)[0]
            steps = dp.contexts.get(hc, {}).get(he, [])
            if not steps or steps[-1].app != "Return":
                errors.append(f"hangup handler {hc},{he} does not end with Return()")
    return errors


# -- an evaluator: runs contexts the way Asterisk does ---------------------------------


class Hangup(Exception):
    pass


@dataclass
class Run:
    """What one evaluated path did: applications run (with expanded arguments), the
    errors Asterisk would log, and the channel variables at the end."""

    apps: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)


_VAR = re.compile(r"\$\{([A-Za-z0-9_]+)\}")
_CUT = re.compile(r"\$\{CUT\(([A-Za-z0-9_]+),([^,()]),(\d+)\)\}")
_ARITH = re.compile(r"(-?\d+)(?:\s*([-+])\s*(-?\d+))?(?:\s*(>|<|=|!=)\s*(-?\d+))?")
EPOCH = "1764800000"


def _expand(text: str, variables: dict[str, str]) -> str:
    """``${VAR}``, then ``${CUT(VAR,d,n)}`` (func_cut.c: field n, "" past the end)."""
    text = _VAR.sub(lambda m: variables.get(m.group(1), ""), text)

    def cut(m: re.Match[str]) -> str:
        fields = variables.get(m.group(1), "").split(m.group(2))
        n = int(m.group(3))
        return fields[n - 1] if 1 <= n <= len(fields) else ""

    return _CUT.sub(cut, text)


def _arith(inner: str) -> int:
    """``a [+-] b [> < = != c]`` on integers (ast_expr2: arithmetic binds tighter);
    anything else (an empty operand is a syntax error in Asterisk) fails the test."""
    m = _ARITH.fullmatch(inner.strip())
    assert m, f"expression the evaluator (and Asterisk) cannot compute: $[{inner}]"
    value = int(m.group(1))
    if m.group(2):
        value = value + int(m.group(3)) if m.group(2) == "+" else value - int(m.group(3))
    if m.group(4):
        rhs = int(m.group(5))
        value = int({">": value > rhs, "<": value < rhs, "=": value == rhs,
                     "!=": value != rhs}[m.group(4)])
    return value


def _expr(text: str) -> bool:
    """``$[...]`` as the dialplan uses it here: ``"a" = "b"``, ``"a" != "b"``, or
    integer arithmetic / comparison (``_arith``)."""
    inner = text.strip()
    assert inner.startswith("$[") and inner.endswith("]"), text
    inner = inner[2:-1].strip()
    m = re.fullmatch(r'"([^"]*)"\s*(!=|=)\s*"([^"]*)"', inner)
    if m:
        return (m.group(1) == m.group(3)) == (m.group(2) == "=")
    return _arith(inner) != 0


Result = dict[str, str] | Callable[[str, dict[str, str]], dict[str, str]]


def evaluate(dp: Dialplan, context: str, exten: str, variables: dict[str, str], *,
             results: dict[str, Result] | None = None,
             gosub: bool = False, limit: int = 200) -> Run:
    """Run ``context,exten,1`` like pbx.c + app_stack.c would.

    ``Set(LOCAL(x)=v)`` outside a Gosub frame logs app_stack's ERROR and sets nothing;
    inside one it sets the channel variable and Return() restores the old value.
    ``results`` maps an application to the variables it sets (AGI, AMD, TryExec...),
    or to a function of (expanded arguments, variables) returning them. ``EPOCH`` is
    the clock (default ``EPOCH``): a result may move it on to model time passing.
    ``gosub`` runs the start as a Gosub frame (hangup handlers run that way).
    """
    run = Run(variables={"EPOCH": EPOCH, **variables})
    v = run.variables
    results = results or {}
    frames: list[tuple[str, str, int, dict[str, str | None]]] = []
    if gosub:
        frames.append(("", "", 0, {}))
    ctx, ext, idx = context, exten, 0

    def jump(target: str) -> None:
        nonlocal ctx, ext, idx
        parts = split_args(target)
        if len(parts) == 1:
            c, e, p = ctx, ext, parts[0]
        elif len(parts) == 2:
            c, e, p = ctx, parts[0], parts[1]
        else:
            c, e, p = parts
        steps = dp.contexts[c][e]
        idx = int(p) - 1 if p.isdigit() else next(i for i, s in enumerate(steps) if s.label == p)
        ctx, ext = c, e

    for _ in range(limit):
        steps = dp.contexts[ctx][ext]
        if idx >= len(steps):
            return run  # fell off the end: hangup
        st = steps[idx]
        idx += 1
        data = st.data
        if st.app == "Set":
            name, _, value = data.partition("=")
            value = _expand(value, v)
            if value.startswith("$[") and value.endswith("]"):
                value = str(_arith(value[2:-1]))
            m = re.fullmatch(r"LOCAL\((\w+)\)", name)
            if m:
                if not frames:
                    run.errors.append(f"ERROR app_stack.c: Tried to set LOCAL({m.group(1)}), "
                                      "but we aren't within a Gosub routine")
                    continue
                saved = frames[-1][3]
                if m.group(1) not in saved:
                    saved[m.group(1)] = v.get(m.group(1))
                v[m.group(1)] = value
            elif "(" in name:
                run.apps.append(("Set", f"{name}={value}"))  # a function: CHANNEL(), TALK_DETECT()
            else:
                v[name] = value
            continue
        if st.app == "GotoIf":
            cond, _, branches = data.partition("?")
            yes, _, no = branches.partition(":")
            target = yes if _expr(_expand(cond, v)) else no
            if target:
                jump(target)
            continue
        if st.app == "Goto":
            jump(data)
            continue
        if st.app == "Gosub":
            frames.append((ctx, ext, idx, {}))
            jump(data)
            continue
        if st.app == "Return":
            if not frames:
                run.errors.append("ERROR app_stack.c: Return without Gosub: stack is empty")
                return run
            ctx_r, ext_r, idx_r, saved = frames.pop()
            for k, old in saved.items():
                if old is None:
                    v.pop(k, None)
                else:
                    v[k] = old
            if not ctx_r:
                return run
            ctx, ext, idx = ctx_r, ext_r, idx_r
            continue
        args = _expand(data, v)
        run.apps.append((st.app, args))
        key = "AudioSocket" if st.app == "TryExec" and data.startswith("AudioSocket(") \
            else st.app
        result = results.get(key, {})
        v.update(result(args, v) if callable(result) else result)
        if st.app in ("Hangup", "Busy", "Congestion"):
            return run
    raise AssertionError(f"no end after {limit} steps at {ctx},{ext}")


def amd_args(run: Run) -> list[list[str]]:
    return [split_args(a) for app, a in run.apps if app == "AMD"]


# -- the checks on the real file ----------------------------------------------------


def test_include_is_well_formed_and_follows_the_rules():
    dp = parse(CONF.read_text())
    assert set(dp.contexts) >= {"aigw-inbound", "aigw-outbound", "aigw-bridge",
                                "aigw-fallback", "aigw-hangup"}
    assert all(c.startswith("aigw-") for c in dp.contexts), "only aigw-* contexts"
    assert check(dp) == []


def test_every_routing_path_reaches_the_shared_bridge_or_a_fallback():
    dp = parse(CONF.read_text())
    inbound = dp.contexts["aigw-inbound"]["_[0-9+]."]
    apps = [s.app for s in inbound]
    assert apps.index("AGI") < apps.index("Gosub")
    assert any(s.app == "Gosub" and s.data == "aigw-bridge,s,1" for s in inbound)
    assert any(s.app == "Gosub" and s.data == "aigw-fallback,s,1" for s in inbound)
    out = dp.contexts["aigw-outbound"]["s"]
    out_apps = [s.app for s in out]
    assert "AMD" in out_apps and out_apps.index("AMD") < out_apps.index("Gosub")
    assert any(s.app == "Gosub" and s.data == "aigw-bridge,s,1" for s in out)
    # AGI: the route URL is the only argument; no caller data.
    agi = next(s for s in inbound if s.app == "AGI")
    assert agi.data == "aigw_route.py,${AIGW_ROUTE_URL}"
    bridge = dp.contexts["aigw-bridge"]["s"]
    assert bridge[0].app == "Answer"
    mix = next(s for s in bridge if s.app == "MixMonitor")
    assert "^{AIGW_CALL_ID}" in mix.data and "aigw_route.py --recording-done" in mix.data
    assert "${AIGW_CALL_ID}" not in split_args(mix.data)[2]  # ^{} = expanded at start
    hangup = dp.contexts["aigw-hangup"]["s"]
    assert hangup[0].app == "UserEvent" and "${HANGUPCAUSE}" in hangup[0].data


def test_dial_context_reads_only_what_the_gateway_sets():
    dp = parse(CONF.read_text())
    dial = dp.contexts["aigw-dial"]["s"]
    step = next(s for s in dial if s.app == "Dial")
    assert step.data == "${AIGW_DIAL_TARGETS},${AIGW_DIAL_TIMEOUT},${AIGW_DIAL_OPTIONS}"
    after = dial[dial.index(step) + 1:]
    assert [s.data.split("=", 1)[0] for s in after[:2]] == [
        "AIGW_DIAL_ANSWERED", "AIGW_DIAL_STATUS"]
    assert "${ANSWEREDTIME}" in after[0].data and "${DIALSTATUS}" in after[1].data
    # The resume leg goes through the bridge's failover, without a second MixMonitor.
    resume = next(s for s in dial if s.app == "Gosub")
    assert resume.data == "aigw-bridge,resume,1"
    assert dial[dial.index(resume) - 1].app == "Answer"
    assert '"${AIGW_BRIDGE}" != "done"' in dial[dial.index(resume) + 1].data
    entry = dp.contexts["aigw-bridge"]["resume"]
    assert [(s.app, s.data) for s in entry] == [
        ("Set", "LOCAL(leg)=${AIGW_RESUME_ID}"), ("Goto", "s,connect")]
    bridge = dp.contexts["aigw-bridge"]["s"]
    connect = next(i for i, s in enumerate(bridge) if s.label == "connect")
    assert not any(s.app == "MixMonitor" for s in bridge[connect:])
    assert dial[-1].app == "Hangup" and dial[-1].data == "16"  # HANGUPCAUSE sticks
    read = {v for s in dial for v in re.findall(r"\$\{(AIGW_[A-Z0-9_]+)", s.data)}
    assert read <= set(DIAL_VARIABLES) | {"AIGW_BRIDGE"}
    assert set(DIAL_VARIABLES) - {"AIGW_NEXT"} <= read
    # Both contexts that run AudioSocket continue there when the gateway asks.
    for ctx, ext in (("aigw-inbound", "_[0-9+]."), ("aigw-outbound", "s")):
        steps = dp.contexts[ctx][ext]
        jump = [s for s in steps if s.app == "GotoIf" and "aigw-dial,s,1" in s.data]
        assert len(jump) == 1 and "${AIGW_NEXT}" in jump[0].data
        assert steps.index(jump[0]) > next(i for i, s in enumerate(steps)
                                           if s.data == "aigw-bridge,s,1")
    assert "LOCAL(" not in "".join(s.data for s in dp.contexts["aigw-outbound"]["s"])


def test_variables_contract_matches_the_agi_and_the_api():
    spec = importlib.util.spec_from_file_location("aigw_route", ROOT / "agi" / "aigw_route.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert set(mod.VARIABLES) == set(ROUTE_VARIABLES) == set(route_variables("unknown"))
    ov = originate_variables(call_id="0b6f2b1c-3f0e-4d0a-9a51-2f4f2c1d9e10",
                             audiosocket="127.0.0.1:9092", tenant="acme", agent="support")
    assert set(ov) == set(ORIGINATE_VARIABLES)
    text = CONF.read_text()
    for var in DEPLOYMENT_VARIABLES:
        assert var in text.split("\n[aigw-inbound]")[0], f"{var} undocumented in the header"


CALL = {"AIGW_CALL_ID": "0b6f2b1c-3f0e-4d0a-9a51-2f4f2c1d9e10",
        "AIGW_AUDIOSOCKET": "127.0.0.1:9092"}
BRIDGED = {"AMD": {"AMDSTATUS": "HUMAN"}, "AudioSocket": {"TRYSTATUS": "SUCCESS"}}


@pytest.mark.parametrize("budget", ["15000", "2000", "60000"])
def test_outbound_amd_gets_the_voicemail_budget_without_errors(budget):
    dp = parse(CONF.read_text())
    run = evaluate(dp, "aigw-outbound", "s",
                   {**CALL, "AIGW_AMD": "1", "AIGW_AMD_MS": budget}, results=BRIDGED)
    assert run.errors == []
    assert amd_args(run) == [["2500", "1500", "800", budget]]
    assert ("TryExec", f"AudioSocket({CALL['AIGW_CALL_ID']},{CALL['AIGW_AUDIOSOCKET']})") \
        in run.apps


def test_outbound_amd_default_and_off():
    dp = parse(CONF.read_text())
    run = evaluate(dp, "aigw-outbound", "s", {**CALL, "AIGW_AMD": "1"}, results=BRIDGED)
    assert run.errors == [] and amd_args(run) == [["2500", "1500", "800", "5000"]]
    run = evaluate(dp, "aigw-outbound", "s", {**CALL, "AIGW_AMD": "0", "AIGW_AMD_MS": "9000"},
                   results=BRIDGED)
    assert run.errors == [] and amd_args(run) == []
    machine = {**BRIDGED, "AMD": {"AMDSTATUS": "MACHINE"}}
    run = evaluate(dp, "aigw-outbound", "s", {**CALL, "AIGW_AMD": "1", "AIGW_AMD_MS": "9000",
                                              "AIGW_VOICEMAIL_ACTION": "hangup"}, results=machine)
    assert run.errors == [] and run.apps[-1] == ("Hangup", "16")
    assert not any(app == "TryExec" for app, _ in run.apps)


@pytest.mark.parametrize("resume_id,after", [
    (CALL["AIGW_CALL_ID"], "TryExec"),  # hold timed out (or bridge ended early): back
    ("", "Hangup"),                     # the person accepted: the bridge ended, hang up
])
def test_attended_transfer_contexts_run_cleanly(resume_id, after):
    dp = parse(CONF.read_text())
    assert {"aigw-hold", "aigw-resume", "aigw-consult"} <= set(dp.contexts)
    variables = {"AIGW_RESUME_ID": resume_id, "AIGW_HOLD_TIMEOUT": "75",
                 "AIGW_AUDIOSOCKET": "127.0.0.1:9092"}
    run = evaluate(dp, "aigw-hold", "s", variables,
                   results={"AudioSocket": {"TRYSTATUS": "SUCCESS"}})
    assert run.errors == []
    assert ("MusicOnHold", "default,75") in run.apps
    apps = [a for a, _ in run.apps]
    assert after in apps[apps.index("MusicOnHold"):]
    assert run.apps[-1] == ("Hangup", "16")
    if resume_id:
        assert ("TryExec", f"AudioSocket({resume_id},127.0.0.1:9092)") in run.apps
    run = evaluate(dp, "aigw-consult", "s", {"AIGW_CONSULT_ID": CALL["AIGW_CALL_ID"],
                                             "AIGW_AUDIOSOCKET": "127.0.0.1:9092"},
                   results={"AudioSocket": {"TRYSTATUS": "SUCCESS"}})
    assert run.errors == [] and run.apps[-1] == ("Hangup", "16")
    assert ("TryExec", f"AudioSocket({CALL['AIGW_CALL_ID']},127.0.0.1:9092)") in run.apps
    # [aigw-resume] goes through the bridge's resume path: the alternates too.
    run = evaluate(dp, "aigw-resume", "s",
                   {"AIGW_RESUME_ID": "r-1", "AIGW_AUDIOSOCKET": "127.0.0.1:9092",
                    "AIGW_AUDIOSOCKET_ALT": "127.0.0.1:9093"},
                   results={"AudioSocket": {"TRYSTATUS": "FAILED"}})
    assert run.errors == [] and run.apps[-1] == ("Hangup", "16")
    tried = [d for a, d in run.apps if a == "TryExec"]
    assert tried == ["AudioSocket(r-1,127.0.0.1:9092)", "AudioSocket(r-1,127.0.0.1:9093)"]


@pytest.mark.parametrize("status", ["ok", "busy", "unknown", "unavailable", ""])
@pytest.mark.parametrize("trystatus", ["SUCCESS", "FAILED"])
@pytest.mark.parametrize("fallback", ["", "PJSIP/human"])
def test_every_path_runs_without_dialplan_errors(status, trystatus, fallback):
    dp = parse(CONF.read_text())
    results = {"AGI": {"AIGW_STATUS": status, **CALL, "AIGW_RECORD": "1",
                       "AIGW_RECORDING_FILE": "/var/spool/asterisk/monitor/t/x.wav",
                       "AIGW_FALLBACK": fallback},
               "AudioSocket": {"TRYSTATUS": trystatus}, "Dial": {"DIALSTATUS": "NOANSWER"}}
    for ctx, ext in (("aigw-inbound", "+15551230000"), ("aigw-inbound", "s"),
                     ("aigw-outbound", "s")):
        e = "_[0-9+]." if ext.startswith("+") else ext
        variables = {"AIGW_AMD": "1", "AIGW_AMD_MS": "7000", **CALL} if ctx == "aigw-outbound" \
            else {}
        run = evaluate(dp, ctx, e, variables, results=results)
        assert run.errors == [], (ctx, ext, run.errors)
        assert run.apps[-1][0] in ("Hangup", "Busy", "Congestion"), run.apps
    # The hangup handler runs in a Gosub frame of its own.
    run = evaluate(dp, "aigw-hangup", "s", {"AIGW_CALL_ID": CALL["AIGW_CALL_ID"]}, gosub=True)
    assert run.errors == [] and run.apps[0][0] == "UserEvent"


NODES = ("10.0.0.5:9092", "10.0.0.6:9092", "[2001:db8::7]:9092")


def _audiosocket(up: set[str], *, dies_after_s: int = 0, connect_s: int = 0):
    """TryExec(AudioSocket(id,addr)) against nodes: FAILED after ``connect_s`` (0:
    refused at once, 2: a host that is down, the 2000 ms connect timeout) unless
    ``addr`` is in ``up``; an up node ends the call (SUCCESS), or with
    ``dies_after_s`` dies mid-call that many seconds later (FAILED)."""
    def result(args: str, v: dict[str, str]) -> dict[str, str]:
        addr = split_args(args[len("AudioSocket("):-1])[1]
        if addr not in up:
            # EPOCH is whole seconds: a 2 s connect can span 3 of them.
            return {"TRYSTATUS": "FAILED", "EPOCH": str(int(v["EPOCH"]) + connect_s)}
        if dies_after_s:
            return {"TRYSTATUS": "FAILED", "EPOCH": str(int(v["EPOCH"]) + dies_after_s)}
        return {"TRYSTATUS": "SUCCESS"}
    return result


def _tried(run: Run) -> list[str]:
    return [split_args(a[len("AudioSocket("):-1])[1] for app, a in run.apps
            if app == "TryExec"]


@pytest.mark.parametrize("connect_s", [0, 3])
@pytest.mark.parametrize("up,tried,bridge", [
    ({NODES[0]}, NODES[:1], "done"),                 # the routing node takes it
    ({NODES[1]}, NODES[:2], "done"),                 # it is down: the next one
    ({NODES[2]}, NODES, "done"),                     # an IPv6 node, last in the list
    (set(), NODES, "failed"),                        # all down: fallback, bounded
])
def test_bridge_fails_over_to_the_alternate_gateways(up, tried, bridge, connect_s):
    dp = parse(CONF.read_text())
    variables = {**CALL, "AIGW_AUDIOSOCKET": NODES[0],
                 "AIGW_AUDIOSOCKET_ALT": "&".join(NODES[1:])}
    run = evaluate(dp, "aigw-bridge", "s", variables, gosub=True,
                   results={"AudioSocket": _audiosocket(up, connect_s=connect_s)})
    assert run.errors == []
    assert _tried(run) == list(tried)
    assert run.variables["AIGW_BRIDGE"] == bridge
    assert all(a.startswith(f"AudioSocket({CALL['AIGW_CALL_ID']},") for app, a in run.apps
               if app == "TryExec")
    assert "addr" not in run.variables and "next" not in run.variables  # LOCAL, restored


def test_bridge_does_not_reconnect_a_call_whose_gateway_died_mid_call():
    dp = parse(CONF.read_text())
    variables = {**CALL, "AIGW_AUDIOSOCKET": NODES[0],
                 "AIGW_AUDIOSOCKET_ALT": "&".join(NODES[1:])}
    run = evaluate(dp, "aigw-bridge", "s", variables, gosub=True,
                   results={"AudioSocket": _audiosocket(set(NODES), dies_after_s=4)})
    assert run.errors == [] and _tried(run) == [NODES[0]]
    assert run.variables["AIGW_BRIDGE"] == "failed"


RESUME_ID = "6f1c2f7e-0d1b-4a53-9a55-1d7d3c3a9b10"
DIALED = {**CALL, "AIGW_AUDIOSOCKET": NODES[0], "AIGW_AUDIOSOCKET_ALT": "&".join(NODES[1:]),
          "AIGW_DIAL_TARGETS": "PJSIP/+15550002222@aigw-trunk", "AIGW_DIAL_TIMEOUT": "20",
          "AIGW_DIAL_OPTIONS": "g", "AIGW_RESUME_ID": RESUME_ID}


@pytest.mark.parametrize("connect_s", [0, 3])
@pytest.mark.parametrize("up,tried", [
    ({NODES[0]}, NODES[:1]),            # the dialing node takes the caller back
    ({NODES[1]}, NODES[:2]),            # it is gone: the next node (shared store)
    (set(), NODES),                     # all down: hung up, bounded
])
def test_resume_leg_after_dial_fails_over_like_the_bridge(up, tried, connect_s):
    dp = parse(CONF.read_text())
    run = evaluate(dp, "aigw-dial", "s", dict(DIALED), results={
        "Dial": {"DIALSTATUS": "ANSWER", "ANSWEREDTIME": "12"},
        "AudioSocket": _audiosocket(up, connect_s=connect_s)})
    assert run.errors == []
    assert _tried(run) == list(tried)
    assert all(a.startswith(f"AudioSocket({RESUME_ID},") for app, a in run.apps
               if app == "TryExec")
    assert not any(app == "MixMonitor" for app, _ in run.apps)  # still the first one's
    assert run.variables["AIGW_BRIDGE"] == ("done" if up else "failed")
    assert run.variables["AIGW_DIAL_STATUS"] == "ANSWER"
    assert run.apps[-1] == ("Hangup", "16")
    assert "leg" not in run.variables and "addr" not in run.variables  # LOCAL, restored


def test_resume_leg_is_not_reconnected_when_its_node_dies_mid_call():
    dp = parse(CONF.read_text())
    run = evaluate(dp, "aigw-dial", "s", dict(DIALED), results={
        "Dial": {"DIALSTATUS": "NOANSWER"},
        "AudioSocket": _audiosocket(set(NODES), dies_after_s=4)})
    assert run.errors == [] and _tried(run) == [NODES[0]]
    assert run.apps[-1] == ("Hangup", "16")


def test_resume_leg_loops_into_the_next_dial_when_the_gateway_asks():
    dp = parse(CONF.read_text())
    calls = {"n": 0}

    def audiosocket(args: str, v: dict[str, str]) -> dict[str, str]:
        calls["n"] += 1  # the first resumed leg asks for another Dial, the second ends
        return {"TRYSTATUS": "SUCCESS", "AIGW_NEXT": "dial" if calls["n"] == 1 else ""}

    run = evaluate(dp, "aigw-dial", "s", dict(DIALED), results={
        "Dial": {"DIALSTATUS": "BUSY"}, "AudioSocket": audiosocket})
    assert run.errors == []
    assert [app for app, _ in run.apps].count("Dial") == 2 and calls["n"] == 2


def test_inbound_without_alternates_tries_the_one_node_then_falls_back():
    dp = parse(CONF.read_text())
    results = {"AGI": {"AIGW_STATUS": "ok", **CALL, "AIGW_AUDIOSOCKET_ALT": "",
                       "AIGW_FALLBACK": "PJSIP/human"},
               "AudioSocket": _audiosocket(set()), "Dial": {"DIALSTATUS": "ANSWER"}}
    run = evaluate(dp, "aigw-inbound", "_[0-9+].", {}, results=results)
    assert run.errors == [] and _tried(run) == [CALL["AIGW_AUDIOSOCKET"]]
    assert ("Dial", "PJSIP/human") in [(a, d.split(",")[0]) for a, d in run.apps]


def test_evaluator_refuses_an_expression_asterisk_could_not_compute():
    dp = parse("[aigw-x]\nexten => s,1,GotoIf($[${EPOCH} - ${nothing} > 1]?1)\n")
    with pytest.raises(AssertionError, match="cannot compute"):
        evaluate(dp, "aigw-x", "s", {})


def test_evaluator_logs_local_outside_gosub_like_asterisk():
    buggy = ("[aigw-outbound]\nexten => s,1,Set(LOCAL(amdtotal)=${AIGW_AMD_MS})\n"
             " same => n,GotoIf($[\"${amdtotal}\" != \"\"]?amd)\n"
             " same => n,Set(LOCAL(amdtotal)=5000)\n"
             " same => n(amd),AMD(2500,1500,800,${amdtotal})\n"
             "[aigw-sub]\nexten => s,1,Set(LOCAL(x)=1)\n same => n,NoOp(${x})\n"
             " same => n,Return()\n")
    dp = parse(buggy)
    run = evaluate(dp, "aigw-outbound", "s", {"AIGW_AMD_MS": "15000"})
    assert len(run.errors) == 2 and all("aren't within a Gosub" in e for e in run.errors)
    assert amd_args(run) == [["2500", "1500", "800", ""]]  # AMD falls back to its 5000
    run = evaluate(dp, "aigw-sub", "s", {}, gosub=True)
    assert run.errors == [] and run.apps == [("NoOp", "1")] and "x" not in run.variables


# -- the checker can fail -------------------------------------------------------------

BROKEN = {
    "option b": "[aigw-x]\nexten => s,1,Answer()\n"
                " same => n,MixMonitor(${AIGW_RECORDING_FILE},b)\n",
    "bare AudioSocket": "[aigw-x]\nexten => s,1,Answer()\n"
                        " same => n,AudioSocket(${AIGW_CALL_ID},${AIGW_AUDIOSOCKET})\n",
    "no answer": "[aigw-x]\nexten => s,1,NoOp()\n"
                 " same => n,TryExec(AudioSocket(${AIGW_CALL_ID},${AIGW_AUDIOSOCKET}))\n"
                 " same => n,GotoIf($[\"${TRYSTATUS}\" = \"SUCCESS\"]?1)\n",
    "unknown var": "[aigw-x]\nexten => s,1,NoOp(${AIGW_NOPE})\n",
    "unknown var in a function": "[aigw-x]\nexten => s,1,NoOp(${CUT(AIGW_NOPE,&,1)})\n",
    "caller data": "[aigw-x]\nexten => s,1,AGI(x.py,${CALLERID(num)})\n",
    "missing label": "[aigw-x]\nexten => s,1,GotoIf($[1]?nowhere)\n",
    "missing context": "[aigw-x]\nexten => s,1,Gosub(aigw-none,s,1)\n",
    "unbalanced": "[aigw-x]\nexten => s,1,Set(A=$[1)\n",
    "priority": "[aigw-x]\nexten => s,2,NoOp()\n",
    "garbage": "[aigw-x]\nexten s 1 NoOp\n",
    "same first": "[aigw-x]\n same => n,NoOp()\n",
    "LOCAL outside Gosub": "[aigw-x]\nexten => s,1,Set(LOCAL(a)=1)\n same => n,NoOp(${a})\n",
    "LOCAL in a Goto target": "[aigw-x]\nexten => s,1,Gosub(aigw-y,s,1)\n"
                              " same => n,Goto(aigw-y,s,1)\n"
                              "[aigw-y]\nexten => s,1,Set(LOCAL(a)=1)\n same => n,Return()\n",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_checker_catches(name):
    assert check(parse(BROKEN[name])), name


# -- asterisklint, when installed ------------------------------------------------------

# asterisklint 0.4.3 does not know these applications (app_amd, app_audiosocket).
ALINT_UNKNOWN_APPS = {"AMD", "AudioSocket"}


def _asterisklint(tmp_path: Path, conf_text: str) -> list[str]:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "extensions.conf").write_text(
        "[general]\nstatic=yes\nwriteprotect=yes\n\n[globals]\n\n#include extensions_aigw.conf\n")
    (etc / "extensions_aigw.conf").write_text(conf_text)
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, os; from asterisklint.main import main; "
         "sys.exit(main(sys.argv[1:], os.environ))", "dialplan-check",
         str(etc / "extensions.conf")],
        capture_output=True, text=True, timeout=60, env={**os.environ, "ALINT_IGNORE": ""},
    )
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
    return [ln for ln in lines
            if not any(f"E_APP_MISSING: app '{a}'" in ln for a in ALINT_UNKNOWN_APPS)]


needs_alint = pytest.mark.skipif(
    importlib.util.find_spec("asterisklint") is None,
    reason="asterisklint not installed (pip install asterisklint)",
)


@needs_alint
def test_asterisklint_accepts_the_include(tmp_path):
    assert _asterisklint(tmp_path, CONF.read_text()) == []


@needs_alint
def test_asterisklint_rejects_a_broken_copy(tmp_path):
    broken = CONF.read_text().replace("Return()\n", "Return(\n", 1)
    assert _asterisklint(tmp_path, broken)


def test_no_stray_copies_in_the_tree():
    assert shutil.which("true")  # sanity: subprocess tools exist for the lint run
    assert not list((ROOT / "dialplan").glob("*.orig"))
